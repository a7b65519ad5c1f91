"""Run folders: ``run.json`` (provenance and status), ``history.jsonl``, listing.

See the "Runs" section of docs/architecture.md for the layout other stages read.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch

import dataloupe
from dataloupe import _runstate
from dataloupe._fileio import write_json_atomic
from dataloupe.project import DataloupeError, Project, check_name

def check_run_name(name: str) -> str:
    return check_name(name, "run")


def run_dir(project: Project, name: str) -> Path:
    return project.runs_dir / check_run_name(name)


def new_run_name(project: Project, prefix: str) -> str:
    """``<prefix>-<n>`` with the first unused ``n``."""
    n = 1
    while (project.runs_dir / f"{prefix}-{n}").exists():
        n += 1
    return f"{prefix}-{n}"


def hardware() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def resume_target(project: Project, run: str, resume: bool, *, pretrain: bool,
                  force: bool = False) -> tuple[Path, bool, dict | None]:
    """Where run ``run`` lives and whether it really resumes: ``(folder, resume, saved run.json or None)``.

    A run killed before its first write resumes as a fresh start. A run that failed (or
    died) before finishing an epoch holds nothing to keep: starting it again replaces it.
    Resuming a missing run, a run of the other kind (training vs ``pretrain``), or starting
    over a run with finished epochs (unless ``force`` and it is not completed) is refused
    with the command to use. The caller holds the run's claim (:func:`run_claim`).
    """
    folder = run_dir(project, run)
    exists = (folder / "run.json").is_file()
    if resume and not exists and folder.is_dir():
        resume = False  # killed before its first write: start it afresh
    if not resume:
        if exists:
            info = read_run_at(folder)
            status, done = info.get("status"), int(info.get("epochs_done") or 0)
            if status == "running":  # we hold the run's claim: whoever wrote "running" is gone
                status = "failed"
            if status == "completed":
                raise DataloupeError(f"run {run!r} already exists (completed): --resume with more epochs to extend"
                                     " it, or use another --run name")
            if done and not force:
                over = "" if pretrain else ", --force to start it over (its folder is replaced)"
                raise DataloupeError(f"run {run!r} already exists ({status} after {done} of {info.get('epochs')}"
                                     f" epochs): --resume to continue it{over}, or use another --run name")
            clear_run_folder(folder)  # failed before any epoch, or --force: a fresh start
        return folder, False, None
    if not exists:
        raise DataloupeError(f"cannot resume: run {run!r} does not exist")
    info = read_run_at(folder)
    if (info.get("kind") == "pretrain") != pretrain:
        raise DataloupeError(f"run {run!r} is a training run, not a pretrain run: resume it with"
                             f" `dataloupe train --run {run} --resume`" if pretrain else
                             f"run {run!r} is a pretrain run: resume it with"
                             f" `dataloupe pretrain --run {run} --resume`")
    return folder, True, info


def clear_run_folder(folder: Path) -> None:
    """Remove everything a previous attempt left in ``folder``."""
    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


@contextlib.contextmanager
def run_claim(folder: Path, ctx, run: str | None = None):
    """Hold run ``folder`` for this job (the primary takes the lock; every process learns the outcome).

    Raises:
        RunBusyError: another live process works on this run; nothing was touched.
    """
    held, err = None, None
    if ctx.is_primary():
        try:
            held = _runstate.claim(folder, run)
        except DataloupeError as e:
            err = str(e)
    err = ctx.broadcast_object(err)
    if err:
        raise _runstate.RunBusyError(err)
    try:
        yield
    finally:
        if held is not None:
            held.release()


@contextlib.contextmanager
def marking_status(folder: Path, primary: bool):
    """Around a run's epochs: ``status`` becomes ``failed`` if they raise (or are interrupted),
    ``completed`` (with ``finished``) when they end; only the primary process writes."""
    try:
        yield
    except BaseException:
        if primary:
            update_run(folder, status="failed")
        raise
    if primary:
        update_run(folder, status="completed", finished=now())


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_version() -> str:
    return dataloupe.__version__


def read_run(project: Project, name: str) -> dict:
    """``run.json`` of run ``name``."""
    path = run_dir(project, name) / "run.json"
    if not path.is_file():
        known = ", ".join(list_run_names(project)) or "none"
        raise DataloupeError(f"unknown run {name!r}; known runs: {known}")
    return _runstate.effective_status(path.parent, json.loads(path.read_text()))


def update_run(folder: Path, **fields) -> dict:
    path = folder / "run.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    info.update(fields)
    write_json_atomic(path, info)
    return info


def read_history(folder: Path) -> list[dict]:
    path = folder / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_history(folder: Path, last_epoch: int) -> list[dict]:
    """Keep epochs ``<= last_epoch`` (resuming rewinds to the last checkpointed epoch)."""
    kept = [h for h in read_history(folder) if h["epoch"] <= last_epoch]
    tmp = folder / ".history.jsonl.tmp"
    tmp.write_text("".join(json.dumps(h) + "\n" for h in kept))
    os.replace(tmp, folder / "history.jsonl")
    return kept


def append_history(folder: Path, record: dict) -> None:
    with open(folder / "history.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def list_run_names(project: Project) -> list[str]:
    return sorted(p.parent.name for p in project.runs_dir.glob("*/run.json"))


_SUMMARY = ("run", "status", "recipe", "train_table", "train_revision", "val_table", "val_revision",
            "epochs", "epochs_done", "best_val_top1", "best_epoch", "created")
_PRETRAIN_SUMMARY = ("kind", "method", "tables", "knn_top1")  # added for pretrain runs (no val table, no top-1)


def list_runs(project: Project) -> list[dict]:
    """One summary dict per run (oldest first)."""
    out = []
    for name in list_run_names(project):
        info = read_run(project, name)
        keys = _SUMMARY + (_PRETRAIN_SUMMARY if info.get("kind") == "pretrain" else ())
        out.append({k: info.get(k) for k in keys})
    return sorted(out, key=lambda r: r.get("created") or "")


def show_run(project: Project, name: str) -> dict:
    """``run.json`` plus ``history``, the run folder and the files in ``plots/``."""
    info = read_run(project, name)
    folder = run_dir(project, name)
    info["history"] = read_history(folder)
    info["folder"] = str(folder)
    info["plots"] = sorted(str(p) for p in (folder / "plots").glob("*.png"))
    info["checkpoints"] = sorted(str(p) for p in (folder / "checkpoints").glob("*.pt"))
    return info


def read_run_at(folder: Path) -> dict:
    """``run.json`` of the run in ``folder`` ({} when absent); a dead "running" run reads as failed."""
    path = folder / "run.json"
    return _runstate.effective_status(folder, json.loads(path.read_text())) if path.is_file() else {}
