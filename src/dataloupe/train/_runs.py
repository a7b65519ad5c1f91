"""What training adds to run folders: hardware provenance, resume rules, the run's claim
and its status around the epochs. The run record itself (``run.json``, ``history.jsonl``,
names, artifacts) lives in :mod:`dataloupe.runs`, without torch.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
from pathlib import Path

import torch

from dataloupe import _runstate
from dataloupe.project import DataloupeError, Project
from dataloupe._fileio import write_json_atomic
from dataloupe.runs import now, read_run_at, run_dir, truncate_history, update_run


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


class RunWriter:
    """The one writer of a training run's folder: every method writes (or prints) on the
    primary process only and does nothing on the others (torchvision's ``save_on_master``),
    so the engine holds no rank checks of its own."""

    def __init__(self, folder: Path, primary: bool):
        self.folder = Path(folder)
        self.primary = primary

    def print(self, *lines: str) -> None:
        if self.primary:
            for line in lines:
                print(line, flush=True)

    def start(self, info: dict, recipe) -> None:
        """A fresh run: ``checkpoints/``, ``recipe.yaml`` and ``run.json``."""
        if self.primary:
            (self.folder / "checkpoints").mkdir(parents=True, exist_ok=True)
            self.save_recipe(recipe)
            write_json_atomic(self.folder / "run.json", info)

    def save_recipe(self, recipe) -> None:
        if self.primary:
            from dataloupe.train._recipe import save_recipe  # noqa: PLC0415

            save_recipe(recipe, self.folder / "recipe.yaml")

    def update(self, **fields) -> dict | None:
        """Set ``fields`` in ``run.json``; the new record (None off the primary)."""
        return update_run(self.folder, **fields) if self.primary else None

    def truncate_history(self, last_epoch: int) -> None:
        if self.primary:
            truncate_history(self.folder, last_epoch)

    def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the primary (a write of several files, e.g. one epoch's)."""
        return fn(*args, **kwargs) if self.primary else None

    def marking_status(self):
        """:func:`marking_status` around the run's epochs."""
        return marking_status(self.folder, self.primary)
