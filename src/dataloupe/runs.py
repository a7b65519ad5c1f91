"""Run folders, read and written without torch: the one home of the run record.

``runs/<run>/run.json`` (the record: provenance and status), ``history.jsonl`` (one
object per finished epoch), the artifacts beside them (``metrics/<table>.lance``,
``analysis.json``, ``checkpoints/``, ``plots/``) and the run-name rule. Training writes
these; analysis, the loop, the report, the dashboard and the CLI read them through this
module, so the light stages need not import torch. Layout: docs/architecture.md ("Runs").

Example:
    >>> from dataloupe.project import Project
    >>> from dataloupe import runs
    >>> runs.check_run_name("cm-1")
    'cm-1'
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from dataloupe import _runstate
from dataloupe._fileio import write_bytes_atomic, write_json_atomic
from dataloupe.project import DataloupeError, Project, check_name


# ---- names -------------------------------------------------------------------------
def check_run_name(name: str) -> str:
    """``name`` if it is a valid run name (the project's name rule), else :class:`DataloupeError`."""
    return check_name(name, "run")


def run_dir(project: Project, name: str) -> Path:
    """``runs/<name>`` (checked name; the folder may not exist yet)."""
    return project.runs_dir / check_run_name(name)


def new_run_name(project: Project, prefix: str) -> str:
    """``<prefix>-<n>`` with the first unused ``n``."""
    n = 1
    while (project.runs_dir / f"{prefix}-{n}").exists():
        n += 1
    return f"{prefix}-{n}"


def list_run_names(project: Project) -> list[str]:
    """Names of the runs that have a ``run.json``, sorted."""
    if not project.runs_dir.is_dir():
        return []
    return sorted(p.parent.name for p in project.runs_dir.glob("*/run.json"))


# ---- the record ----------------------------------------------------------------------
def existing_run_dir(project: Project, name: str) -> Path:
    """The folder of run ``name``; an unknown or malformed name raises :class:`DataloupeError`."""
    folder = run_dir(project, name)
    if not (folder / "run.json").is_file():
        known = ", ".join(list_run_names(project)) or "none"
        raise DataloupeError(f"unknown run {name!r}; known runs: {known}")
    return folder


def read_run(project: Project, name: str) -> dict:
    """``run.json`` of run ``name``; a dead "running" run reads as failed (:func:`read_run_at`)."""
    return read_run_at(existing_run_dir(project, name))


def read_run_at(folder: Path) -> dict:
    """``run.json`` of the run in ``folder`` ({} when absent); a dead "running" run reads as failed."""
    path = Path(folder) / "run.json"
    if not path.is_file():
        return {}
    return _runstate.effective_status(path.parent, read_json(path))


def update_run(folder: Path, **fields) -> dict:
    """Set ``fields`` in ``folder``'s ``run.json`` (atomic write); returns the new record."""
    path = Path(folder) / "run.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    info.update(fields)
    write_json_atomic(path, info)
    return info


def now() -> str:
    """The time stamp run records carry (UTC, ISO 8601, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_version() -> str:
    import dataloupe  # noqa: PLC0415 (the package imports this module's users)

    return dataloupe.__version__


def run_tables(info: dict) -> dict[str, str]:
    """Role -> table name for the run's train and val tables.

    A pretrain run has no roles: each of its tables maps to itself, in the order given.
    """
    if info.get("kind") == "pretrain":
        return {t["table"]: t["table"] for t in info.get("tables", [])}
    return {role: info[f"{role}_table"] for role in ("train", "val") if info.get(f"{role}_table")}


def table_roles(info: dict, table: str) -> set[str]:
    """Names by which analysis records may refer to ``table``: itself and its run role(s).

    ``analysis.json`` records carry ``table`` as the role (``"train"`` / ``"val"``) and
    leakage pairs carry ``train_id`` / ``val_id``; ids are only unique within one table.
    """
    roles = {table}
    for role in ("train", "val"):
        if info.get(f"{role}_table") == table:
            roles.add(role)
    return roles


_SUMMARY = ("run", "status", "recipe", "train_table", "train_revision", "val_table", "val_revision",
            "epochs", "epochs_done", "best_val_top1", "best_epoch", "created")
_PRETRAIN_SUMMARY = ("kind", "method", "tables", "knn_top1")  # added for pretrain runs (no val table, no top-1)
_ENSEMBLE_SUMMARY = ("kind", "members")  # added for ensemble runs (they train no epochs of their own)
_MEMORY_SUMMARY = ("kind", "base", "memory")  # added for kNN-memory runs (a trained run plus a memory)


def list_runs(project: Project) -> list[dict]:
    """One summary dict per run (oldest first), as ``dataloupe runs ls`` prints."""
    out = []
    for name in list_run_names(project):
        info = read_run(project, name)
        extra = {"pretrain": _PRETRAIN_SUMMARY, "ensemble": _ENSEMBLE_SUMMARY,
                 "memory": _MEMORY_SUMMARY}.get(info.get("kind"), ())
        keys = _SUMMARY + extra
        out.append({k: info.get(k) for k in keys})
    return sorted(out, key=lambda r: r.get("created") or "")


# ---- history -------------------------------------------------------------------------
def read_history(folder: Path) -> list[dict]:
    """One dict per finished epoch from ``folder/history.jsonl``, oldest first ([] when absent).

    A torn last line (a run still writing it, or killed mid-write) is skipped.
    """
    path = Path(folder) / "history.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def append_history(folder: Path, record: dict) -> None:
    """Append one epoch's record (flushed and fsynced)."""
    with open(Path(folder) / "history.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_history(folder: Path, last_epoch: int) -> list[dict]:
    """Keep epochs ``<= last_epoch`` (resuming rewinds to the last checkpointed epoch)."""
    kept = [h for h in read_history(folder) if h["epoch"] <= last_epoch]
    write_bytes_atomic(Path(folder) / "history.jsonl", "".join(json.dumps(h) + "\n" for h in kept).encode())
    return kept


# ---- artifacts -------------------------------------------------------------------------
def metrics_tables(project: Project, run: str) -> list[str]:
    """Tables the run collected per-sample metrics on."""
    d = project.runs_dir / run / "metrics"
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(".lance")] for p in d.iterdir() if p.name.endswith(".lance"))


def metrics_path(project: Project, run: str, table: str, *, must_exist: bool = False) -> Path:
    """``runs/<run>/metrics/<table>.lance``; with ``must_exist``, an unknown run or a table
    without metrics raises :class:`DataloupeError` naming the tables that have some."""
    if must_exist:
        existing_run_dir(project, run)
        names = metrics_tables(project, run)
        if table not in names:
            raise DataloupeError(f"run {run!r} has no metrics for table {table!r} (has: {', '.join(names) or 'none'})")
    return project.runs_dir / run / "metrics" / f"{table}.lance"


def analysis_path(project: Project, run: str) -> Path:
    """``runs/<run>/analysis.json`` (written by ``dataloupe analyze``)."""
    return project.runs_dir / run / "analysis.json"


def read_analysis_at(folder: Path) -> dict:
    """``analysis.json`` of the run in ``folder``, or ``{}`` when analysis has not run."""
    path = Path(folder) / "analysis.json"
    return read_json(path) if path.is_file() else {}


def show_run(project: Project, name: str) -> dict:
    """``run.json`` plus ``history``, the run folder and the files in ``plots/`` and ``checkpoints/``."""
    info = read_run(project, name)
    folder = run_dir(project, name)
    info["history"] = read_history(folder)
    info["folder"] = str(folder)
    info["plots"] = sorted(str(p) for p in (folder / "plots").glob("*.png"))
    info["checkpoints"] = sorted(str(p) for p in (folder / "checkpoints").glob("*.pt"))
    return info


def read_json(path: Path) -> dict:
    """A run file holding one JSON object; unreadable ones raise :class:`DataloupeError`."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataloupeError(f"cannot read {path.name} of run {path.parent.name!r}: {e}") from None
    if not isinstance(obj, dict):
        raise DataloupeError(f"{path} does not hold a JSON object")
    return obj
