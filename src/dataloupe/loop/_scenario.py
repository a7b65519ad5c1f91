"""Build the few-labels scenarios the demo and the benchmarks run the loop on, and score
a loop's automatic labels against the truth the loop never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataloupe.project import DataloupeError, Project
from dataloupe.tables import create_table, open_table


@dataclass(frozen=True)
class Scenario:
    """Tables made from a fully labeled source table.

    Attributes:
        train: name of the training table (few labels, some flipped, the rest undefined).
        val: name of the validation table.
        flipped_ids: ids in ``train`` whose given label is wrong on purpose.
    """

    train: str
    val: str
    flipped_ids: tuple[int, ...]


def few_labels_scenario(
    project: Project, source: str, *, train: str, per_class: int = 20, flip: float = 0.1,
    pool: int | None = None, val_source: str | None = None, val: str | None = None,
    val_size: int | None = None, seed: int = 0,
) -> Scenario:
    """From fully labeled table ``source``: keep ``per_class`` labels per class, flip
    ``flip`` of them to another class (seeded), and make ``pool`` more rows undefined.

    The truth stays in ``source`` (joined on the ``truth_id`` column), never in the
    training table's labels. ``val`` (optional) is a ``val_size`` sample of ``val_source``.
    """
    src = open_table(project, source)
    rows = src.to_arrow(columns=["id", "path", "label"])
    classes = src.classes
    rng = np.random.default_rng(seed)
    labels = np.array(rows["label"].to_pylist(), dtype=object)
    keep_lab, flipped_pos = [], []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise DataloupeError(f"class {c!r} has {len(idx)} rows, fewer than {per_class}")
        keep_lab += rng.choice(idx, per_class, replace=False).tolist()
    keep_lab = np.array(sorted(keep_lab))
    n_flip = int(round(flip * len(keep_lab)))
    flipped_pos = rng.choice(len(keep_lab), n_flip, replace=False)
    given = labels[keep_lab].copy()
    for p in flipped_pos:
        others = [c for c in classes if c != given[p]]
        given[p] = others[rng.integers(len(others))]
    rest = np.setdiff1d(np.arange(rows.num_rows), keep_lab)
    if pool is not None:
        rest = np.sort(rng.choice(rest, min(pool, len(rest)), replace=False))
    order = np.concatenate([keep_lab, rest])
    out = pa.table({
        "path": rows["path"].take(pa.array(order)),
        "label": pa.array(list(given) + [None] * len(rest), pa.string()),
        "truth_id": rows["id"].take(pa.array(order)),
    })
    t = create_table(project, train, out, classes=classes, image_root=src.image_root,
                     message=f"scenario: {per_class} labels/class from {source}, "
                             f"{n_flip} flipped, {len(rest)} undefined")
    flipped_ids = tuple(int(t.to_arrow(columns=["id"])["id"][int(p)].as_py()) for p in flipped_pos)
    if val:
        vsrc = open_table(project, val_source or source)
        vrows = vsrc.to_arrow(columns=["id", "path", "label"])
        if val_size is not None and val_size < vrows.num_rows:
            vrows = vrows.take(pa.array(np.sort(rng.choice(vrows.num_rows, val_size, replace=False))))
        create_table(project, val, pa.table({"path": vrows["path"], "label": vrows["label"],
                                             "truth_id": vrows["id"]}),
                     classes=classes, image_root=vsrc.image_root, split="val",
                     message=f"validation sample of {vsrc.name}")
    return Scenario(train, val or "", flipped_ids)


def score_auto_labels(project: Project, train: str, source: str, *, since: int = 1) -> dict:
    """Precision and coverage of the labels the loop gave to rows undefined at ``since``.

    Returns ``{"auto_labeled", "pool", "coverage", "correct", "precision", "flipped_fixed"}``.
    """
    first = open_table(project, train, since).to_arrow(columns=["id", "label", "truth_id"])
    last = open_table(project, train).to_arrow(columns=["id", "label", "weight"])
    truth = open_table(project, source).to_arrow(columns=["id", "label"])
    tmap = dict(zip(truth["id"].to_pylist(), truth["label"].to_pylist()))
    pool = first.filter(pc.is_null(first["label"]))
    pool_truth = dict(zip(pool["id"].to_pylist(), (tmap[t] for t in pool["truth_id"].to_pylist())))
    now = dict(zip(last["id"].to_pylist(), last["label"].to_pylist()))
    auto = {i: now[i] for i in pool_truth if now.get(i) is not None}
    correct = sum(auto[i] == pool_truth[i] for i in auto)
    return {"pool": len(pool_truth), "auto_labeled": len(auto),
            "coverage": len(auto) / max(1, len(pool_truth)), "correct": correct,
            "precision": correct / len(auto) if auto else None}
