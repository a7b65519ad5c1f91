"""Row filters the browser cannot run on its own columns: text in the image path, and a value
of one of the table's metadata columns (the dashboard's path and metadata filters).

The points blob carries labels, predictions and metrics but no paths or metadata, so the
dashboard asks for the matching ids and filters on them, as it does for tags.

Value syntax (``value``), on a column of

* text: ``scan`` contains (case-insensitive), ``=scan-a`` equals (case-insensitive),
  ``!scan`` does not contain, ``!=scan-a`` differs;
* numbers: ``3`` or ``=3`` equals, ``!=3``, ``>3``, ``>=3``, ``<3``, ``<=3``, ``2..5`` between
  (both ends included);
* true/false: ``true`` / ``false``.

``=`` alone matches rows where the column is empty (null or ""); ``!=`` alone the others.

Example:
    >>> rows = pa.table({"id": [0, 1], "path": ["a/x.png", "b/y.png"], "width": [32, 64]})
    >>> match_ids(rows, path="B/").tolist(), match_ids(rows, column="width", value=">40").tolist()
    ([1], [1])
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataloupe.project import DataloupeError

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CMP = re.compile(rf"^(<=|>=|!=|<|>|=)?\s*({_NUM})$")
_SPAN = re.compile(rf"^({_NUM})\s*\.\.\s*({_NUM})$")
_OPS = {"=": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
        ">=": pc.greater_equal}


def filter_columns(names: list[str]) -> list[str]:
    """The columns the metadata filter offers: every column but the id, the path and the label."""
    return [n for n in names if n not in ("id", "path", "label")]


def match_ids(rows: pa.Table, *, path: str | None = None, column: str | None = None,
              value: str | None = None) -> np.ndarray:
    """Ids (N,) of ``rows`` whose path contains ``path`` (case-insensitive) and whose ``column``
    matches ``value`` (see the module docstring); an empty condition matches every row."""
    keep = pa.array(np.ones(rows.num_rows, bool))
    if path:
        keep = pc.and_(keep, pc.fill_null(pc.match_substring(rows["path"], path, ignore_case=True), False))
    if column and value is not None and value.strip():
        if column not in rows.column_names:
            raise DataloupeError(f"unknown column {column!r}; columns: {', '.join(filter_columns(rows.column_names))}")
        keep = pc.and_(keep, pc.fill_null(_value_mask(rows[column], value.strip(), column), False))
    return rows["id"].filter(keep).to_numpy()


def _value_mask(col: pa.ChunkedArray, value: str, name: str):
    t = col.type
    if value in ("=", "!="):
        empty = pc.is_null(col)
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            empty = pc.or_(empty, pc.fill_null(pc.equal(col, ""), False))
        return empty if value == "=" else pc.invert(empty)
    if pa.types.is_boolean(t):
        v = value.lstrip("=").strip().lower()
        if v not in ("true", "false"):
            raise DataloupeError(f"column {name!r} holds true/false; got {value!r}")
        return pc.equal(col, v == "true")
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        x = pc.cast(col, pa.float64())
        m = _SPAN.match(value)
        if m:
            lo, hi = sorted((float(m.group(1)), float(m.group(2))))
            return pc.and_(pc.greater_equal(x, lo), pc.less_equal(x, hi))
        m = _CMP.match(value)
        if not m:
            raise DataloupeError(f"column {name!r} holds numbers: write 3, >3, <=3, !=3 or 2..5; got {value!r}")
        return _OPS[m.group(1) or "="](x, float(m.group(2)))
    text = pc.cast(col, pa.string())
    for op, neg, exact in (("!=", True, True), ("!", True, False), ("=", False, True)):
        if value.startswith(op):
            v = value[len(op):].strip()
            m = (pc.equal(pc.utf8_lower(text), v.lower()) if exact
                 else pc.match_substring(text, v, ignore_case=True))
            return pc.invert(pc.fill_null(m, False)) if neg else m
    return pc.match_substring(text, value, ignore_case=True)
