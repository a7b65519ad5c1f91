"""From table references to the plain arrays the engine trains on."""

from __future__ import annotations

from dataclasses import dataclass

from dataloupe.data import SampleSet, sample_set_from_table
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import TableRef, open_ref


@dataclass(frozen=True)
class TrainData:
    """Training and validation rows with their provenance.

    Attributes:
        train, val: the rows (all of them; the engine filters to labeled, weight > 0).
        classes: class order of the run (the training table's classes).
        train_table, val_table: table names; ``*_revision``: exact revisions used.
    """

    train: SampleSet
    val: SampleSet
    classes: list[str]
    train_table: str
    train_revision: int
    val_table: str
    val_revision: int


def check_classes(train_classes: list[str], val_classes: list[str], *, train_name: str, val_name: str) -> None:
    """The validation table must have exactly the training table's classes."""
    if set(train_classes) != set(val_classes):
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise DataloupeError(
            f"validation table {val_name} has different classes from training table {train_name}"
            f" (only in train: {', '.join(only_t) or '-'}; only in val: {', '.join(only_v) or '-'})"
        )


def load_train_data(project: Project, train_ref: str, val_ref: str) -> TrainData:
    """Open both tables, check their classes agree and turn them into :class:`SampleSet` arrays."""
    t = open_ref(project, train_ref)
    v = open_ref(project, val_ref)
    classes = list(t.classes)
    if not classes:
        raise DataloupeError(f"training table {t.name}@{t.revision} has no labeled rows")
    check_classes(classes, list(v.classes), train_name=f"{t.name}@{t.revision}", val_name=f"{v.name}@{v.revision}")
    return TrainData(
        train=sample_set_from_table(t, classes), val=sample_set_from_table(v, classes), classes=classes,
        train_table=t.name, train_revision=int(t.revision), val_table=v.name, val_revision=int(v.revision),
    )


@dataclass(frozen=True)
class PretrainData:
    """The given tables as arrays: ``samples`` (all rows, one set per table), their
    provenance (``tables``: table, revision, content_key) and ``classes`` (union of the
    tables' classes, for the kNN monitor only)."""

    samples: list[SampleSet]
    tables: list[dict]
    classes: list[str]


def load_pretrain_data(project: Project, refs: list[str]) -> PretrainData:
    """Open ``TABLE[@REV]`` references (each table once)."""
    if not refs:
        raise DataloupeError("pretrain needs at least one --table")
    names = [TableRef.parse(r).name for r in refs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataloupeError(f"table(s) given more than once: {', '.join(twice)}")
    opened = [open_ref(project, r) for r in refs]
    classes: list[str] = []
    for t in opened:
        classes += [c for c in t.classes if c not in classes]
    samples = [sample_set_from_table(t, classes) for t in opened]
    tables = [{"table": t.name, "revision": int(t.revision), "content_key": s.content_key}
              for t, s in zip(opened, samples)]
    return PretrainData(samples, tables, classes)
