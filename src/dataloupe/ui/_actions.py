"""Dashboard actions on a selection: each is exactly one table edit (one revision).

The request is validated in full before anything is written: unknown ids, unknown classes,
an unknown run, or a table that moved on since the page loaded it are refused with a
message and the table is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from dataloupe.project import DataloupeError, Project
from dataloupe.tables import StaleRevisionError, edit_table, open_table
from dataloupe.ui import _runs

# Dashboard action name → (table edit action, needs a label, suggestion kind or None).
# The names are the tables' edit actions where there is one (``undefine``).
UI_ACTIONS = {
    "set_label": ("set_label", True, None),
    "undefine": ("undefine", False, None),
    "exclude": ("exclude", False, None),
    "include": ("include", False, None),
    "accept_pseudo_labels": ("set_label", False, "pseudo"),
    "accept_suggested_labels": ("set_label", False, "suggested"),
}
# Older names the HTTP API still accepts (public: scripts may send them).
ACTION_ALIASES = {"mark_undefined": "undefine"}
MAX_IDS = 5_000_000


class ConflictError(StaleRevisionError):
    """The table has a newer revision than the one the request was made against."""


@dataclass(frozen=True)
class ActionRequest:
    """One action from the dashboard (already parsed from JSON)."""

    action: str
    ids: list[int]
    label: str | None = None
    run: str | None = None
    message: str | None = None
    expected_revision: int | None = None


def apply_action(project: Project, table: str, req: ActionRequest) -> dict:
    """Validate ``req`` and apply it to ``table`` as one revision.

    Returns:
        ``{"committed", "revision", "previous_revision", "matched", "changed", "changes",
        "message", "skipped"}`` where ``skipped`` lists ``{"count", "reason"}`` entries for
        selected samples the action left alone.

    Raises:
        DataloupeError: on any invalid input (nothing is written).
        ConflictError: when ``expected_revision`` is not the table's latest revision.
    """
    req = replace(req, action=ACTION_ALIASES.get(req.action, req.action))
    if req.action not in UI_ACTIONS:
        raise DataloupeError(f"unknown action {req.action!r}; known: {', '.join(UI_ACTIONS)}")
    edit_action, needs_label, kind = UI_ACTIONS[req.action]
    t = open_table(project, table)
    if req.expected_revision is not None and req.expected_revision != t.latest_revision:
        raise ConflictError(  # early answer; the edit checks again under the table's lock
            f"table {table!r} is at revision {t.latest_revision}, not {req.expected_revision}; "
            "reload to see the newer revision first")
    ids = _check_ids(t, req.ids)
    if needs_label:
        if req.label not in t.classes:
            raise DataloupeError(f"unknown class {req.label!r}; classes: {', '.join(t.classes)}")
    elif req.label is not None:
        raise DataloupeError(f"action {req.action!r} takes no label")

    skipped = []
    extra = None
    if kind is not None:
        if not req.run:
            raise DataloupeError(f"action {req.action!r} needs the run whose analysis suggests labels")
        ax = _runs.analysis_index(project, req.run, table)
        mapping = ax.suggested if kind == "suggested" else ax.pseudo
        have = np.array([i for i in ids.tolist() if i in mapping], dtype=np.int64)
        unknown_cls = np.array([i for i in have.tolist() if mapping[i] not in t.classes], dtype=np.int64)
        usable = np.setdiff1d(have, unknown_cls)
        if len(ids) - len(have):
            skipped.append({"count": int(len(ids) - len(have)), "reason": f"no {kind} label in the run's analysis"})
        if len(unknown_cls):
            skipped.append({"count": int(len(unknown_cls)), "reason": "suggested class is not in the table"})
        if not len(usable):
            raise DataloupeError(f"none of the {len(ids)} selected samples has a usable {kind} label")
        extra = pa.table({"id": pa.array(usable), "new_label": pa.array([mapping[i] for i in usable.tolist()], pa.string())})
        ids = usable

    message = (req.message or "").strip() or _default_message(req, len(ids))
    res = edit_table(project, table, action=edit_action, message=message, ids=ids,
                     label=req.label if needs_label else None, extra=extra,
                     set_label_from="new_label" if extra is not None else None,
                     expected_revision=req.expected_revision)
    return {
        "committed": res.committed,
        "revision": res.table.revision,
        "previous_revision": t.latest_revision,
        "matched": res.matched,
        "changed": res.changed,
        "changes": res.changes,
        "message": message if res.committed else "nothing changed; no revision made",
        "skipped": skipped,
    }


def _check_ids(t, ids) -> np.ndarray:
    if not isinstance(ids, list) or not ids:
        raise DataloupeError("ids must be a non-empty list of sample ids")
    if len(ids) > MAX_IDS:
        raise DataloupeError(f"too many ids ({len(ids)} > {MAX_IDS})")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise DataloupeError("ids must be integers")
    arr = np.unique(np.asarray(ids, dtype=np.int64))
    known = t.to_arrow(columns=["id"])["id"].to_numpy()
    unknown = np.setdiff1d(arr, known, assume_unique=True)
    if unknown.size:
        raise DataloupeError(
            f"{unknown.size} id(s) are not in table {t.name!r} (e.g. {', '.join(map(str, unknown[:5]))})")
    return arr


def _default_message(req: ActionRequest, n: int) -> str:
    what = {
        "set_label": f"set label {req.label!r} on",
        "undefine": "mark undefined",
        "exclude": "exclude",
        "include": "include",
        "accept_pseudo_labels": f"accept pseudo-labels of run {req.run} for",
        "accept_suggested_labels": f"accept suggested labels of run {req.run} for",
    }[req.action]
    return f"ui: {what} {n} sample{'s' if n != 1 else ''}"
