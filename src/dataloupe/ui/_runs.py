"""Read the run folders that training and analysis write (see docs/architecture.md).

Only reads: ``run.json``, ``history.jsonl``, ``analysis.json`` and the per-sample metrics
tables under ``metrics/``. Everything returned is plain data (dicts, numpy arrays).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataloupe._runstate import effective_status
from dataloupe.project import DataloupeError, Project, check_name

# Finding types shown in the dashboard, in bit order of the ``findings`` column.
FINDING_TYPES = ("label_issues", "outliers", "near_duplicates", "leakage", "pseudo_labels")
# Record keys that name a sample of the run's table inside an analysis.json record.
_ID_KEYS = ("id", "sample_id", "id_a", "id_b", "other_id", "duplicate_of")
_ID_LIST_KEYS = ("ids", "sample_ids", "members")
_SUGGESTED_KEYS = ("suggested_label", "suggested", "suggestion")
_PSEUDO_KEYS = ("pseudo_label", "suggested_label", "label", "predicted")
# Sections whose records carry no table: pseudo-labels are made for the training table.
_DEFAULT_ROLE = {"pseudo_labels": "train"}


def run_dir(project: Project, run: str) -> Path:
    """The folder of ``run``; unknown or malformed names raise :class:`DataloupeError`."""
    check_name(run, "run")
    d = project.runs_dir / run
    if not (d / "run.json").is_file():
        known = ", ".join(list_run_names(project)) or "none"
        raise DataloupeError(f"unknown run {run!r} (known runs: {known})")
    return d


def list_run_names(project: Project) -> list[str]:
    if not project.runs_dir.is_dir():
        return []
    return sorted(p.name for p in project.runs_dir.iterdir() if (p / "run.json").is_file())


def read_run(project: Project, run: str) -> dict:
    """``run.json`` plus the metrics tables present and whether analysis exists."""
    d = run_dir(project, run)
    info = dict(effective_status(d, _read_json(d / "run.json")))  # a dead "running" run is failed
    info["run"] = info.get("run") or run
    info["metrics_tables"] = metrics_tables(project, run)
    info["has_analysis"] = (d / "analysis.json").is_file()
    return info


def list_runs(project: Project) -> list[dict]:
    """Every run's ``run.json`` (plus metrics tables), oldest first by ``created``."""
    runs = []
    for name in list_run_names(project):
        try:
            runs.append(read_run(project, name))
        except (DataloupeError, ValueError) as e:
            runs.append({"run": name, "status": "unreadable", "error": str(e)})
    return sorted(runs, key=lambda r: (str(r.get("created", "")), r["run"]))


def read_history(project: Project, run: str) -> list[dict]:
    """One dict per finished epoch from ``history.jsonl`` (a torn last line is skipped)."""
    path = run_dir(project, run) / "history.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a run still writing its last line
    return out


def read_analysis(project: Project, run: str) -> dict:
    """``analysis.json`` of the run, or ``{}`` when ``dataloupe analyze`` has not run.

    Parsed once per file version (path, mtime, size); callers must not modify the result.
    """
    path = run_dir(project, run) / "analysis.json"
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
    path = run_dir(project, run) / "analysis.json"
    roles = frozenset(table_roles(_read_json(run_dir(project, run) / "run.json"), table))
    if not path.is_file():
        return _index_of({}, roles)
    st = path.stat()
    return _indexed(str(path), st.st_mtime_ns, st.st_size, roles)


@functools.lru_cache(maxsize=4)
def _parsed(path: str, mtime_ns: int, size: int) -> dict:
    return _read_json(Path(path))


@functools.lru_cache(maxsize=8)
def _indexed(path: str, mtime_ns: int, size: int, roles: frozenset) -> AnalysisIndex:
    return _index_of(_parsed(path, mtime_ns, size), roles)


def _index_of(analysis: dict, roles: frozenset) -> AnalysisIndex:
    return AnalysisIndex(finding_ids(analysis, set(roles)), suggestions(analysis, "suggested", set(roles)),
                         suggestions(analysis, "pseudo", set(roles)))


def metrics_tables(project: Project, run: str) -> list[str]:
    d = project.runs_dir / run / "metrics"
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(".lance")] for p in d.iterdir() if p.name.endswith(".lance"))


def metrics_path(project: Project, run: str, table: str) -> Path:
    names = metrics_tables(project, run_dir(project, run).name)
    if table not in names:
        raise DataloupeError(
            f"run {run!r} has no metrics for table {table!r} (has: {', '.join(names) or 'none'})"
        )
    return project.runs_dir / run / "metrics" / f"{table}.lance"


def table_roles(run_info: dict, table: str) -> set[str]:
    """Names by which analysis records may refer to ``table``: itself and its run role(s).

    ``analysis.json`` records carry ``table`` as the role (``"train"`` / ``"val"``) and
    leakage pairs carry ``train_id`` / ``val_id``; ids are only unique within one table.
    """
    roles = {table}
    if run_info.get("train_table") == table:
        roles.add("train")
    if run_info.get("val_table") == table:
        roles.add("val")
    return roles


def finding_ids(analysis: dict, roles: set[str] | None = None) -> dict[str, np.ndarray]:
    """Sample ids named by each finding type of an ``analysis.json`` object.

    Args:
        analysis: the parsed ``analysis.json``.
        roles: names of the table of interest (see :func:`table_roles`); records about
            another table are skipped. None keeps every record.

    Returns:
        ``{finding type: int64 ids (M,)}`` for every type in :data:`FINDING_TYPES`.
    """
    out = {}
    for kind in FINDING_TYPES:
        ids: list[int] = []
        for rec in _records(analysis.get(kind)):
            ids.extend(_record_ids(rec, roles, _DEFAULT_ROLE.get(kind)))
        out[kind] = np.unique(np.asarray(ids, dtype=np.int64))
    return out


def suggestions(analysis: dict, kind: str, roles: set[str] | None = None) -> dict[int, str]:
    """``{id: label}`` suggested by ``label_issues`` (kind ``"suggested"``) or by
    ``pseudo_labels`` (kind ``"pseudo"``), for records about ``roles`` (None: all)."""
    if kind == "suggested":
        section, keys, default = analysis.get("label_issues"), _SUGGESTED_KEYS, None
    elif kind == "pseudo":
        section, keys, default = analysis.get("pseudo_labels"), _PSEUDO_KEYS, _DEFAULT_ROLE["pseudo_labels"]
    else:
        raise DataloupeError(f"unknown suggestion kind {kind!r} (known: suggested, pseudo)")
    out = {}
    for rec in _records(section):
        if not _about(rec, roles, default):
            continue
        sid = rec.get("id", rec.get("sample_id"))
        lab = next((rec[k] for k in keys if isinstance(rec.get(k), str)), None)
        if isinstance(sid, int) and lab is not None:
            out[int(sid)] = lab
    return out


def _records(section) -> list[dict]:
    """Records of one analysis section: a list of dicts, or a dict holding such lists."""
    if isinstance(section, list):
        return [r for r in section if isinstance(r, dict)]
    if isinstance(section, dict):
        for key in ("records", "items", "samples", "pairs", "groups", "issues"):
            if isinstance(section.get(key), list):
                return [r for r in section[key] if isinstance(r, dict)]
    return []


def _about(rec: dict, roles: set[str] | None, default: str | None) -> bool:
    where = rec.get("table", default)
    return roles is None or not isinstance(where, str) or where in roles


def _record_ids(rec: dict, roles: set[str] | None, default: str | None = None) -> list[int]:
    ids = []
    if _about(rec, roles, default):
        ids = [rec[k] for k in _ID_KEYS if isinstance(rec.get(k), int)]
        for k in _ID_LIST_KEYS:
            if isinstance(rec.get(k), list):
                ids.extend(v for v in rec[k] if isinstance(v, int))
    for role in ("train", "val"):  # leakage pairs: train_id / val_id
        v = rec.get(f"{role}_id")
        if isinstance(v, int) and (roles is None or role in roles):
            ids.append(v)
    return ids


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataloupeError(f"cannot read {path.name} of run {path.parent.name!r}: {e}") from None
    if not isinstance(obj, dict):
        raise DataloupeError(f"{path} does not hold a JSON object")
    return obj


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
        issues = sum(1 for r in _records(read_analysis(project, info["run"]).get("label_issues"))
                     if _about(r, roles, "train"))
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
    for r in _records(found.get("near_duplicates")):
        ids = r.get("ids") or []
        if len(ids) == 2:
            t = name.get(r.get("table"), r.get("table"))
            out.append({"kind": "near duplicate", "a": {"table": t, "id": ids[0]}, "b": {"table": t, "id": ids[1]},
                        "similarity": r.get("similarity"), "exact": bool(r.get("exact"))})
    for r in _records(found.get("leakage")):
        if isinstance(r.get("val_id"), int) and isinstance(r.get("train_id"), int):
            out.append({"kind": "leakage", "a": {"table": name["val"], "id": r["val_id"]},
                        "b": {"table": name["train"], "id": r["train_id"]},
                        "similarity": r.get("similarity"), "exact": bool(r.get("exact"))})
    out.sort(key=lambda p: (not p["exact"], -(p["similarity"] or 0)))
    return out[:limit]
