"""Everything that makes a new revision: create, edit, add, revert, re-class; plus diff.

Every function here takes the table's write lock, reads the latest revision, computes
the new rows in Arrow/numpy, and commits exactly one revision (or none, with the reason,
when nothing would change).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataloupe._storage import Location, is_uri
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import _store
from dataloupe.tables._table import Table, open_table

ACTIONS = ("set_label", "undefine", "exclude", "include", "set_weight", "delete")


@dataclass(frozen=True)
class EditResult:
    """What an edit did: the table after it, rows selected, rows changed.

    ``table.revision`` is the new revision, or the unchanged latest when ``changed == 0``
    (then no revision was made).
    """

    table: Table
    matched: int
    changed: int
    changes: dict
    per_op: tuple = ()

    @property
    def committed(self) -> bool:
        return self.changed > 0


def _normalise_rows(rows: pa.Table, classes: list[str], first_id: int, split: str) -> pa.Table:
    if "path" not in rows.column_names:
        raise DataloupeError("rows need a 'path' column")
    reserved = [c for c in rows.column_names if c.startswith("_") or not c.strip()]
    if reserved:  # Lance reserves _rowid, _rowaddr, ...; an empty name cannot be selected
        raise DataloupeError(f"column name(s) {', '.join(map(repr, reserved))} not allowed (names must not be"
                             " empty or start with '_')")
    n = rows.num_rows

    def column(name: str, typ: pa.DataType, default):
        if name not in rows.column_names:
            return default
        try:
            return rows[name].cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise DataloupeError(f"column {name!r} must hold {typ} values: {str(e).splitlines()[0]}") from None

    cols: dict[str, pa.Array] = {
        "id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
        "path": column("path", pa.string(), None),
        "label": column("label", pa.string(), pa.nulls(n, pa.string())),
        "weight": column("weight", pa.float32(), pa.array(np.ones(n, np.float32))),
        "split": column("split", pa.string(), pa.array([split] * n, pa.string())),
    }
    _check_labels(cols["label"], classes)
    w = cols["weight"].to_numpy(zero_copy_only=False)
    if np.any(~np.isfinite(w)) or np.any(w < 0):
        raise DataloupeError("weights must be finite and >= 0")
    for name in rows.column_names:
        if name not in cols:
            cols[name] = rows[name]
    return pa.table(cols)


def _check_labels(labels: pa.ChunkedArray | pa.Array, classes: list[str]) -> None:
    present = set(pc.unique(pc.drop_null(labels)).to_pylist())
    unknown = sorted(present - set(classes))
    if unknown:
        raise DataloupeError(
            f"unknown class(es) {', '.join(map(repr, unknown[:5]))}; classes: {', '.join(classes)}"
        )


def create_table(
    project: Project,
    name: str,
    rows: pa.Table,
    *,
    classes: list[str],
    image_root: str | os.PathLike,
    message: str = "import",
    split: str = "train",
    before_commit: Callable[[], None] | None = None,
) -> Table:
    """Create table ``name`` as revision 1 from ``rows`` (columns ``path`` [, ``label``,
    ``weight``, ``split``, metadata...]); ids are assigned 0..N-1.

    ``before_commit`` runs under the table's write lock once the name is known to be free
    (an importer writes the image files there, so two imports into one name never mix).

    Example:
        >>> rows = pa.table({"path": ["a/1.png"], "label": ["a"]})
        >>> t = create_table(Project.open("/tmp/p"), "demo", rows, classes=["a"],
        ...                  image_root="/data")  # doctest: +SKIP
    """
    if len(set(classes)) != len(classes) or not classes:
        raise DataloupeError(f"classes must be a non-empty list without repeats, got {classes}")
    tdir = _store.table_dir(project, name)
    with _store.write_lock(tdir):
        if (tdir / "revisions.json").exists():
            raise DataloupeError(f"table {name!r} already exists (use --append to add rows)")
        table = _normalise_rows(rows, classes, 0, split)
        if before_commit is not None:
            before_commit()
        _store.write_settings(tdir, {"image_root": str(_local_image_root(image_root))})
        _store.commit(tdir, table, message=message, changes={"added": table.num_rows},
                      classes=classes, log=[], extra={"next_id": table.num_rows})
    return open_table(project, name)


def add_rows(project: Project, name: str, rows: pa.Table, *, message: str,
             split: str = "train") -> Table:
    """Append rows (new ids, never reused) as one revision."""
    tdir = _store.require_table(project, name)
    with _store.write_lock(tdir):
        log = _store.read_log(tdir)
        last = log[-1]
        old = _store.read_rows(tdir, last["lance_version"])
        new = _normalise_rows(rows, last["classes"], last["next_id"], split)
        try:
            merged = pa.concat_tables([old, new], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataloupeError(f"new rows do not fit the table's columns: {e}") from None
        _store.commit(tdir, merged, message=message, changes={"added": new.num_rows},
                      classes=last["classes"], log=log,
                      extra={"next_id": last["next_id"] + new.num_rows})
    return open_table(project, name)


def _select(rows: pa.Table, tdir: Location, lance_version: int | None, where: str | None,
            ids: np.ndarray | None, extra: pa.Table | None) -> np.ndarray:
    """Boolean mask (N,) of the rows chosen by ``where`` and/or ``ids``."""
    row_ids = rows["id"].to_numpy()
    if where is None and ids is None:
        raise DataloupeError("select rows with a predicate (--where) or ids (--ids-file)")
    mask = np.ones(len(row_ids), bool)
    if ids is not None:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        unknown = np.setdiff1d(ids, row_ids, assume_unique=True)
        if len(unknown):
            sample = ", ".join(map(str, unknown[:5]))
            raise DataloupeError(f"{len(unknown)} id(s) are not in the table (e.g. {sample})")
        mask &= np.isin(row_ids, ids, assume_unique=True)
    if where is not None:
        if extra is None:
            chosen = _store.read_rows(tdir, lance_version, ["id"], where)["id"].to_numpy()
        else:
            chosen = _filter_joined(rows, extra, where)
        mask &= np.isin(row_ids, chosen, assume_unique=True)
    return mask


def joined_with(rows: pa.Table, extra: pa.Table) -> pa.Table:
    """``rows`` left-joined with ``extra`` on ``id``; the table's own columns win."""
    if "id" not in extra.column_names:
        raise DataloupeError("joined metrics need an 'id' column")
    keep = ["id"] + [c for c in extra.column_names if c not in rows.column_names]
    joined = rows.join(extra.select(keep), keys="id", join_type="left outer")
    return joined.sort_by("id")


def _filter_joined(rows: pa.Table, extra: pa.Table, where: str) -> np.ndarray:
    joined = joined_with(rows, extra)
    # Evaluate the SQL-like predicate with the same engine as plain table edits (Lance's
    # DataFusion filter), on an in-memory dataset, so both paths accept the same syntax.
    flat = joined.select([c for c in joined.column_names
                          if not pa.types.is_fixed_size_list(joined.schema.field(c).type)
                          and not pa.types.is_list(joined.schema.field(c).type)])
    import lance  # noqa: PLC0415 (see the note in _store)

    ds = lance.write_dataset(flat, f"memory://select-{os.getpid()}-{id(flat)}")
    try:
        return ds.to_table(columns=["id"], filter=_store.whole_predicate(where))["id"].to_numpy()
    except (ValueError, OSError) as e:
        raise DataloupeError(f"invalid predicate {where!r}: {_store._first_line(e)}") from None


def _apply(rows: pa.Table, mask: np.ndarray, action: str, *, label: str | None,
           weight: float | None, new_labels: pa.Array | None, classes: list[str]) -> pa.Table:
    pmask = pa.array(mask)
    if action == "delete":
        return rows.filter(pc.invert(pmask))
    if action in ("set_label", "undefine"):
        if new_labels is not None:
            value = new_labels
        elif action == "set_label":
            if label not in classes:
                raise DataloupeError(f"unknown class {label!r}; classes: {', '.join(classes)}")
            value = pa.scalar(label, pa.string())
        else:
            value = pa.scalar(None, pa.string())
        col = pc.if_else(pmask, value, rows["label"])
        return rows.set_column(rows.column_names.index("label"), "label", col)
    if action in ("exclude", "include", "set_weight"):
        w = {"exclude": 0.0, "include": 1.0}.get(action, weight)
        if w is None or not np.isfinite(w) or w < 0:
            raise DataloupeError(f"weight must be a finite number >= 0, got {w}")
        col = pc.if_else(pmask, pa.scalar(w, pa.float32()), rows["weight"])
        return rows.set_column(rows.column_names.index("weight"), "weight", col)
    raise DataloupeError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")


@dataclass(frozen=True)
class EditOp:
    """One edit step; several make one revision with :func:`apply_edits`.

    Fields as in :func:`edit_table`; ``name`` labels the step in messages and results.
    """

    action: str
    where: str | None = None
    ids: np.ndarray | list[int] | None = None
    label: str | None = None
    weight: float | None = None
    set_label_from: str | None = None
    name: str | None = None


def rows_after_ops(rows: pa.Table, ops: list[EditOp], classes: list[str]) -> pa.Table:
    """``rows`` as they will be once ``ops`` (steps that select by ``ids``) apply; nothing is
    written. The loop uses it so that each rule sees what the earlier rules of an iteration did.
    """
    ids = rows["id"].to_numpy()
    for op in ops:
        if op.ids is None or op.where is not None or op.set_label_from is not None:
            raise DataloupeError("rows_after_ops takes only steps that select by ids")
        mask = np.isin(ids, np.asarray(op.ids, np.int64))
        rows = _apply(rows, mask, op.action, label=op.label, weight=op.weight, new_labels=None, classes=classes)
        ids = rows["id"].to_numpy()
    return rows


def _op_mask_and_labels(op: EditOp, rows: pa.Table, tdir: Location, version: int | None,
                        extra: pa.Table | None, classes: list[str]):
    if op.action not in ACTIONS:
        raise DataloupeError(f"unknown action {op.action!r}; known: {', '.join(ACTIONS)}")
    if version is None and op.where is not None and extra is None:
        extra = pa.table({"id": rows["id"]})  # rows already changed in memory: filter those
    mask = _select(rows, tdir, version, op.where, op.ids, extra)
    new_labels = None
    if op.set_label_from is not None:
        col = op.set_label_from
        if op.action != "set_label" or extra is None or col not in extra.column_names:
            cols = ", ".join(c for c in (extra.column_names if extra is not None else []))
            raise DataloupeError(f"--set-label-from {col!r} needs a run whose metrics have that "
                                 f"column (available: {cols or 'none: pass --run'})")
        src = joined_with(rows.select(["id"]), extra.select(["id", col]))
        new_labels = src[col].cast(pa.string()).combine_chunks()
        mask &= pc.is_valid(new_labels).to_numpy(zero_copy_only=False)
        _check_labels(pc.filter(new_labels, pa.array(mask)), classes)
    return mask, new_labels


def apply_edits(project: Project, name: str, ops: list[EditOp], *,
                message: str | Callable[[tuple], str],
                extra: pa.Table | None = None, expected_revision: int | None = None) -> EditResult:
    """Apply ``ops`` in order to the latest revision and commit them as ONE revision.

    Each op's predicate sees the rows as the earlier ops left them. Nothing is written if
    any op is invalid or if nothing changes, or (:class:`StaleRevisionError`) if
    ``expected_revision`` is given and is not the latest revision once the lock is held. ``EditResult.per_op`` lists, per op, its
    name, rows matched and changes; ``message`` may be a function of that list, so the
    revision message can state what each step changed.

    Example:
        >>> apply_edits(p, "cm-train", [EditOp("exclude", where="loss > 5", name="high loss"),
        ...     EditOp("set_label", where="label IS NULL AND confidence > 0.99",
        ...            set_label_from="predicted", name="auto-label")],
        ...     extra=metrics, message="iteration 2")  # doctest: +SKIP
    """
    if not ops:
        raise DataloupeError("no edits given")
    tdir = _store.require_table(project, name)
    with _store.write_lock(tdir):
        log = _store.read_log(tdir)
        last = log[-1]
        if expected_revision is not None and expected_revision != last["revision"]:
            raise _store.StaleRevisionError(
                f"table {name!r} is at revision {last['revision']}, not {expected_revision}; "
                "reload to see the newer revision first")
        classes = last["classes"]
        rows = _store.read_rows(tdir, last["lance_version"])
        version: int | None = last["lance_version"]
        per_op = []
        cur = rows
        for k, op in enumerate(ops):
            mask, new_labels = _op_mask_and_labels(op, cur, tdir, version, extra, classes)
            nxt = _apply(cur, mask, op.action, label=op.label, weight=op.weight,
                         new_labels=new_labels, classes=classes)
            per_op.append({"name": op.name or op.action, "action": op.action,
                           "matched": int(mask.sum()),
                           "changes": change_summary(cur, nxt, classes)})
            if nxt is not cur:
                version = None  # later ops filter the in-memory rows
            cur = nxt
        changes = change_summary(rows, cur, classes)
        matched = sum(o["matched"] for o in per_op)
        if not sum(changes.values()):
            return EditResult(open_table(project, name), matched, 0, changes, tuple(per_op))
        text = message(tuple(per_op)) if callable(message) else message
        _store.commit(tdir, cur, message=text, changes=changes, classes=classes,
                      log=log, extra={"next_id": last["next_id"]})
    return EditResult(open_table(project, name), matched, sum(changes.values()), changes,
                      tuple(per_op))


def edit_table(
    project: Project,
    name: str,
    *,
    action: str,
    message: str,
    where: str | None = None,
    ids: np.ndarray | list[int] | None = None,
    label: str | None = None,
    weight: float | None = None,
    extra: pa.Table | None = None,
    set_label_from: str | None = None,
    expected_revision: int | None = None,
) -> EditResult:
    """Apply one edit to the latest revision of ``name``; commits one revision if anything changes.

    Args:
        action: one of ``set_label``, ``undefine``, ``exclude`` (weight 0), ``include``
            (weight 1), ``set_weight``, ``delete``.
        message: the revision message.
        where: SQL-like predicate over the table's columns (and ``extra``'s), e.g.
            ``"label = 'muffin' AND weight > 0"``.
        ids: sample ids to select (intersected with ``where`` when both are given).
        label: the class for ``set_label``.
        weight: the weight for ``set_weight``.
        extra: Arrow table with an ``id`` column (e.g. a run's per-sample metrics) joined
            before ``where`` is evaluated.
        set_label_from: with ``set_label``, take each row's new label from this column of
            ``extra`` (rows where it is null are left alone).
        expected_revision: refuse (``StaleRevisionError``, nothing written) unless this is
            still the latest revision when the table's lock is held.

    Example:
        >>> edit_table(p, "cm-train", action="exclude", where="label = 'muffin'",
        ...            message="try")  # doctest: +SKIP
    """
    op = EditOp(action, where=where, ids=ids, label=label, weight=weight,
                set_label_from=set_label_from)
    return apply_edits(project, name, [op], message=message, extra=extra, expected_revision=expected_revision)


def revert_table(project: Project, name: str, revision: int | str, *,
                 message: str | None = None) -> Table:
    """Make a new revision whose rows and classes equal ``revision``'s (history is kept)."""
    target = open_table(project, name, revision)
    tdir = target.dir
    with _store.write_lock(tdir):
        log = _store.read_log(tdir)
        rows = _store.read_rows(tdir, target.entry["lance_version"])
        old = _store.read_rows(tdir, log[-1]["lance_version"])
        changes = change_summary(old, rows, sorted(set(log[-1]["classes"]) | set(target.classes)))
        _store.commit(tdir, rows, message=message or f"revert to revision {target.revision}",
                      changes=changes, classes=target.classes, log=log,
                      extra={"next_id": log[-1]["next_id"], "reverted_to": target.revision})
    return open_table(project, name)


def set_classes(project: Project, name: str, classes: list[str], *, message: str) -> Table:
    """New revision with another ordered class list (labels in use must stay in it)."""
    if len(set(classes)) != len(classes) or not classes:
        raise DataloupeError(f"classes must be a non-empty list without repeats, got {classes}")
    tdir = _store.require_table(project, name)
    with _store.write_lock(tdir):
        log = _store.read_log(tdir)
        rows = _store.read_rows(tdir, log[-1]["lance_version"])
        _check_labels(rows["label"], classes)
        if classes == log[-1]["classes"]:
            return open_table(project, name)
        _store.commit(tdir, rows, message=message, changes={"classes": len(classes)},
                      classes=classes, log=log, extra={"next_id": log[-1]["next_id"]})
    return open_table(project, name)


def tag_table(project: Project, name: str, tag: str, revision: int | None = None) -> Table:
    """Attach the string ``tag`` to ``revision`` (default latest); a tag names one revision."""
    if not tag or tag.isdigit() or "@" in tag:
        raise DataloupeError(f"invalid tag {tag!r}: tags are non-numeric strings without '@'")
    tdir = _store.require_table(project, name)
    with _store.write_lock(tdir):
        log = _store.read_log(tdir)
        rev = revision or log[-1]["revision"]
        if not 1 <= rev <= len(log):
            raise DataloupeError(f"table {name!r} has no revision {rev}")
        for e in log:
            if tag in e.get("tags", []):
                raise DataloupeError(f"tag {tag!r} already names revision {e['revision']}")
        log[rev - 1]["tags"] = [*log[rev - 1].get("tags", []), tag]
        _store.write_log(tdir, log)
    return open_table(project, name, rev)


def _local_image_root(root: str | os.PathLike) -> Path:
    """The image root as an absolute local path; object-store URIs are refused (not supported)."""
    if is_uri(root):
        raise DataloupeError(f"image root {root} is on an object store: image files are read from a local or mounted"
                             " folder (a table's rows may live on an object store, its images may not)")
    return Path(root).expanduser().resolve()


def set_root(project: Project, name: str, root: str | os.PathLike) -> Table:
    """Re-point the table's image root (not versioned: it says where the files are)."""
    root = _local_image_root(root)
    if not root.is_dir():
        raise DataloupeError(f"image root {root} is not a folder")
    tdir = _store.require_table(project, name)
    with _store.write_lock(tdir):
        settings = _store.read_settings(tdir)
        settings["image_root"] = str(root)
        _store.write_settings(tdir, settings)
    return open_table(project, name)


def _label_codes(labels: pa.ChunkedArray, classes: list[str]) -> np.ndarray:
    codes = pc.index_in(labels, value_set=pa.array(classes, pa.string()))
    return pc.fill_null(codes, -1).to_numpy(zero_copy_only=False)


def _aligned(a: pa.Table, b: pa.Table):
    ia, ib = a["id"].to_numpy(), b["id"].to_numpy()
    common, xa, xb = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
    return ia, ib, common, xa, xb


def change_summary(old: pa.Table, new: pa.Table, classes: list[str]) -> dict:
    """Counts of what changed between two revisions' rows (only non-zero kinds)."""
    ia, ib, common, xa, xb = _aligned(old, new)
    la = _label_codes(old["label"], classes)[xa]
    lb = _label_codes(new["label"], classes)[xb]
    wa = old["weight"].to_numpy()[xa]
    wb = new["weight"].to_numpy()[xb]
    out = {
        "relabeled": int(np.sum((la >= 0) & (lb >= 0) & (la != lb))),
        "labeled": int(np.sum((la < 0) & (lb >= 0))),
        "undefined": int(np.sum((la >= 0) & (lb < 0))),
        "excluded": int(np.sum((wa > 0) & (wb == 0))),
        "included": int(np.sum((wa == 0) & (wb > 0))),
        "reweighted": int(np.sum((wa > 0) & (wb > 0) & (wa != wb))),
        "deleted": int(len(ia) - len(common)),
        "added": int(len(ib) - len(common)),
    }
    return {k: v for k, v in out.items() if v}


@dataclass(frozen=True)
class TableDiff:
    """Per-sample differences between revisions ``a`` and ``b`` of one table."""

    table: str
    a: int
    b: int
    summary: dict
    changed: pa.Table  # id, path, label_a, label_b, weight_a, weight_b
    added: pa.Table  # id, path, label, weight
    removed: pa.Table  # id, path, label, weight

    def to_dict(self, limit: int | None = None) -> dict:
        def rows(t: pa.Table) -> list[dict]:
            return (t.slice(0, limit) if limit is not None else t).to_pylist()

        return {"table": self.table, "from": self.a, "to": self.b, "summary": self.summary,
                "changed": rows(self.changed), "added": rows(self.added),
                "removed": rows(self.removed)}


def diff_revisions(project: Project, name: str, a: int | str, b: int | str) -> TableDiff:
    """Compare two revisions sample by sample (label and weight changes, rows added/removed)."""
    ta, tb = open_table(project, name, a), open_table(project, name, b)
    cols = ["id", "path", "label", "weight"]
    ra, rb = ta.to_arrow(columns=cols), tb.to_arrow(columns=cols)
    classes = sorted(set(ta.classes) | set(tb.classes))
    ia, ib, common, xa, xb = _aligned(ra, rb)
    la, lb = _label_codes(ra["label"], classes)[xa], _label_codes(rb["label"], classes)[xb]
    wa, wb = ra["weight"].to_numpy()[xa], rb["weight"].to_numpy()[xb]
    diff = (la != lb) | (wa != wb)
    sa, sb = xa[diff], xb[diff]
    changed = pa.table({
        "id": pa.array(common[diff]),
        "path": ra["path"].take(sa),
        "label_a": ra["label"].take(sa),
        "label_b": rb["label"].take(sb),
        "weight_a": ra["weight"].take(sa),
        "weight_b": rb["weight"].take(sb),
    })
    added = rb.filter(pa.array(~np.isin(ib, common, assume_unique=True)))
    removed = ra.filter(pa.array(~np.isin(ia, common, assume_unique=True)))
    return TableDiff(name, ta.revision, tb.revision, change_summary(ra, rb, classes),
                     changed, added, removed)
