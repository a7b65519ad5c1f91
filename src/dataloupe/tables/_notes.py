"""Per-sample tags and comments, stored in the table (columns ``tags``, ``comment``) and so
versioned like labels: every change is one revision, diffable and revertible.

``tags`` holds a sorted, comma-separated set of short words (null = none); ``comment`` free
text (null = none).

Example:
    >>> annotate(p, "cm-train", [4, 9], add_tags=["blurry"], message="tag blurry")   # doctest: +SKIP
    >>> notes_of(open_table(p, "cm-train"), 4)                                          # doctest: +SKIP
    {'tags': ['blurry'], 'comment': None}
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from dataloupe.project import DataloupeError, Project
from dataloupe.tables import _store
from dataloupe.tables._table import Table, open_table

TAG_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,40}$")
NOTE_COLUMNS = ("tags", "comment")


def _split(v: str | None) -> set[str]:
    return {t for t in (v or "").split(",") if t}


def annotate(project: Project, name: str, ids: list[int] | np.ndarray, *, add_tags: list[str] = (),
             remove_tags: list[str] = (), comment: str | None = None, clear_comment: bool = False,
             message: str, expected_revision: int | None = None) -> tuple[Table, int]:
    """Add/remove tags on ``ids`` and/or set their comment, as ONE revision.

    Returns:
        ``(table, changed rows)``; no revision is made when nothing changes.

    Raises:
        DataloupeError: unknown ids, a malformed tag, or ``expected_revision`` not the latest.
    """
    bad = [t for t in (*add_tags, *remove_tags) if not TAG_RE.match(t)]
    if bad:
        raise DataloupeError(f"tags are 1-40 letters, digits or _.:- ; got {bad[:3]}")
    if comment is not None and len(comment) > 2000:
        raise DataloupeError("a comment holds at most 2000 characters")
    tdir = _store.require_table(project, name)
    with _store.write_lock(tdir):
        log = _store.read_log(tdir)
        if expected_revision is not None and expected_revision != log[-1]["revision"]:
            raise DataloupeError(f"table {name!r} is at revision {log[-1]['revision']}, not {expected_revision}; "
                                 "reload to see the newer revision first")
        rows = _store.read_rows(tdir, log[-1]["lance_version"])
        all_ids = rows["id"].to_numpy()
        want = np.unique(np.asarray(ids, np.int64))
        missing = np.setdiff1d(want, all_ids)
        if missing.size:
            raise DataloupeError(f"{missing.size} id(s) are not in table {name!r} (e.g. {missing[:5].tolist()})")
        n = rows.num_rows
        tags = rows["tags"].to_pylist() if "tags" in rows.column_names else [None] * n
        comments = rows["comment"].to_pylist() if "comment" in rows.column_names else [None] * n
        pos = np.searchsorted(all_ids, want)
        changed = 0
        for k in pos.tolist():
            t = _split(tags[k])
            new_t = ",".join(sorted((t | set(add_tags)) - set(remove_tags))) or None
            new_c = None if clear_comment else (comment if comment is not None else comments[k])
            if new_t != tags[k] or new_c != comments[k]:
                changed += 1
            tags[k], comments[k] = new_t, new_c
        if not changed:
            return open_table(project, name), 0
        for col, vals in (("tags", tags), ("comment", comments)):
            arr = pa.array(vals, pa.string())
            rows = (rows.set_column(rows.column_names.index(col), col, arr) if col in rows.column_names
                    else rows.append_column(col, arr))
        _store.commit(tdir, rows, message=message, changes={"annotated": changed}, classes=log[-1]["classes"],
                      log=log, extra={"next_id": log[-1]["next_id"]})
    return open_table(project, name), changed


def notes_of(table: Table, sample_id: int) -> dict:
    """``{"tags": [...], "comment": str | None}`` of one row at the table's revision."""
    t = table.to_arrow(where=f"id = {int(sample_id)}")
    if not t.num_rows:
        raise DataloupeError(f"no sample {sample_id} in table {table.name!r}")
    row = t.to_pylist()[0]
    return {"tags": sorted(_split(row.get("tags"))), "comment": row.get("comment")}


def tag_counts(table: Table) -> dict[str, int]:
    """How many rows carry each tag at the table's revision."""
    t = table.to_arrow()
    if "tags" not in t.column_names:
        return {}
    out: dict[str, int] = {}
    for v in t["tags"].to_pylist():
        for tag in _split(v):
            out[tag] = out.get(tag, 0) + 1
    return dict(sorted(out.items()))
