"""What the dashboard reads of a run folder, on top of :mod:`dataloupe.runs` (the run
record) and :func:`dataloupe.analysis.finding_rows` (the one shape of a finding's rows).

Everything returned is plain data (dicts, numpy arrays).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataloupe import runs
from dataloupe.analysis import finding_rows, list_detectors
from dataloupe.project import DataloupeError, Project
from dataloupe.runs import metrics_tables, read_json, table_roles

# Finding types shown per sample in the dashboard, in bit order of the ``findings`` column
# (the detectors' registration order; new per-sample detectors take the next bits).
FINDING_TYPES = tuple(list_detectors(per_sample=True))


def run_info(project: Project, run: str) -> dict:
    """``run.json`` plus the metrics tables present and whether analysis exists."""
    info = dict(runs.read_run(project, run))  # a dead "running" run reads as failed
    info["run"] = info.get("run") or run
    info["metrics_tables"] = metrics_tables(project, run)
    info["has_analysis"] = runs.analysis_path(project, run).is_file()
    return info


def run_infos(project: Project) -> list[dict]:
    """Every run's :func:`run_info`, oldest first by ``created``."""
    out = []
    for name in runs.list_run_names(project):
        try:
            out.append(run_info(project, name))
        except (DataloupeError, ValueError) as e:
            out.append({"run": name, "status": "unreadable", "error": str(e)})
    return sorted(out, key=lambda r: (str(r.get("created", "")), r["run"]))


def read_analysis(project: Project, run: str) -> dict:
    """``analysis.json`` of the run, or ``{}`` when ``dataloupe analyze`` has not run.

    Parsed once per file version (path, mtime, size); callers must not modify the result.
    """
    path = runs.existing_run_dir(project, run) / "analysis.json"
    if not path.is_file():
        return {}
    st = path.stat()
    return _parsed(str(path), st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class AnalysisIndex:
    """What the dashboard needs from ``analysis.json``, indexed by sample id."""

    findings: dict[str, np.ndarray]  # finding type -> sorted ids
    suggested: dict[int, str]  # label_issues: id -> suggested label
    pseudo: dict[int, str]  # pseudo_labels: id -> label


def analysis_index(project: Project, run: str, table: str) -> AnalysisIndex:
    """:class:`AnalysisIndex` of the run's analysis for ``table`` (cached per file version)."""
    folder = runs.existing_run_dir(project, run)
    path = folder / "analysis.json"
    roles = frozenset(table_roles(read_json(folder / "run.json"), table))
    if not path.is_file():
        return _index_of({}, roles)
    st = path.stat()
    return _indexed(str(path), st.st_mtime_ns, st.st_size, roles)


@functools.lru_cache(maxsize=4)
def _parsed(path: str, mtime_ns: int, size: int) -> dict:
    return read_json(Path(path))


@functools.lru_cache(maxsize=8)
def _indexed(path: str, mtime_ns: int, size: int, roles: frozenset) -> AnalysisIndex:
    return _index_of(_parsed(path, mtime_ns, size), roles)


def _index_of(analysis: dict, roles: frozenset) -> AnalysisIndex:
    return AnalysisIndex(finding_ids(analysis, set(roles)), suggestions(analysis, "label_issues", set(roles)),
                         suggestions(analysis, "pseudo_labels", set(roles)))


def finding_ids(analysis: dict, roles: set[str] | None = None) -> dict[str, np.ndarray]:
    """Sample ids named by each per-sample finding type of an ``analysis.json`` object.

    Args:
        analysis: the parsed ``analysis.json``.
        roles: names of the table of interest (see :func:`dataloupe.runs.table_roles`);
            rows about another table are skipped. None keeps every row.

    Returns:
        ``{finding type: int64 ids (M,)}`` for every type in :data:`FINDING_TYPES`.
    """
    return {kind: np.unique(np.asarray([r.id for r in finding_rows(analysis, kind, roles)], dtype=np.int64))
            for kind in FINDING_TYPES}


def suggestions(analysis: dict, kind: str, roles: set[str] | None = None) -> dict[int, str]:
    """``{id: label}`` that finding ``kind`` (``label_issues``, ``pseudo_labels``) suggests
    for rows about ``roles`` (None: all)."""
    return {r.id: r.suggested_label for r in finding_rows(analysis, kind, roles) if r.suggested_label is not None}


def run_trust(project: Project, info: dict) -> dict:
    """:func:`dataloupe.analysis.model_trust` for a run: its val top-1, class count and how many
    training labels its analysis disputes."""
    from dataloupe.analysis._trust import model_trust  # noqa: PLC0415
    from dataloupe.tables import has_table, open_table  # noqa: PLC0415

    classes = info.get("classes")
    labeled = None
    train = info.get("train_table")
    if train and has_table(project, train):
        try:
            t = open_table(project, train, info.get("train_revision"))
        except DataloupeError:
            t = open_table(project, train)
        classes = classes or t.classes
        labeled = t.summary().get("labeled")
    issues = None
    if info.get("has_analysis"):
        roles = table_roles(info, train) if train else {"train"}
        issues = len(finding_rows(read_analysis(project, info["run"]), "label_issues", roles))
    val = info.get("best_val_top1")
    return model_trust(val if isinstance(val, (int, float)) else None, len(classes or []) or 2,
                       labeled=labeled, label_issues=issues)


def finding_pairs(project: Project, info: dict, limit: int = 500) -> list[dict]:
    """Near-duplicate and leakage pairs of the run's analysis, most similar first:
    ``{"kind", "a": {"table", "id"}, "b": {"table", "id"}, "similarity", "exact"}``
    (tables by name, since ids are per table)."""
    found = read_analysis(project, info["run"])
    name = {"train": info.get("train_table"), "val": info.get("val_table")}
    out = []
    for r in _pairs(found.get("near_duplicates")):
        ids = r.get("ids") or []
        if len(ids) == 2:
            t = name.get(r.get("table"), r.get("table"))
            out.append({"kind": "near duplicate", "a": {"table": t, "id": ids[0]}, "b": {"table": t, "id": ids[1]},
                        "similarity": r.get("similarity"), "exact": bool(r.get("exact"))})
    for r in _pairs(found.get("leakage")):
        if isinstance(r.get("val_id"), int) and isinstance(r.get("train_id"), int):
            out.append({"kind": "leakage", "a": {"table": name["val"], "id": r["val_id"]},
                        "b": {"table": name["train"], "id": r["train_id"]},
                        "similarity": r.get("similarity"), "exact": bool(r.get("exact"))})
    out.sort(key=lambda p: (not p["exact"], -(p["similarity"] or 0)))
    return out[:limit]


def _pairs(section) -> list[dict]:
    return [r for r in section if isinstance(r, dict)] if isinstance(section, list) else []
