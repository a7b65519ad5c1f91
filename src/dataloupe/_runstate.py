"""Whether a run folder is in use: one process at a time, and dead runs seen as failed.

The process that trains (or pretrains) a run holds an exclusive ``fcntl`` lock on
``runs/.<run>.lock`` for as long as it works on the run; the file also holds its pid. (It
sits beside the run folder, not in it, so taking it does not make the run exist.)
The operating system drops the lock when the process ends, however it ends (``kill -9``
included), so:

- a second process that wants the same run is refused at once (two ``train --run dup``
  never write into one folder);
- a ``run.json`` that still says ``running`` while nobody holds the lock belongs to a
  process that died: readers report it as ``failed`` (:func:`effective_status`).

Light on purpose (no torch): the dashboard and ``runs ls`` read it too.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dataloupe.project import DataloupeError

def lock_path(folder: Path) -> Path:
    """``runs/.<run>.lock`` for run folder ``runs/<run>``."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"
DIED = "the process ended before the run finished (killed or crashed)"


class RunBusyError(DataloupeError):
    """Another live process is working on this run."""


class RunClaim:
    """The held lock of one run folder; :meth:`release` (or process exit) frees it."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def claim(folder: Path, run: str | None = None) -> RunClaim:
    """Take ``folder``'s run lock; raises :class:`RunBusyError` if another process holds it."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(folder), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunBusyError(f"run {run or folder.name!r} is in use by another process (pid {pid}): wait for it to"
                           " end, or use another --run name") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return RunClaim(fd)


def is_held(folder: Path) -> bool:
    """True while some process holds ``folder``'s run lock."""
    try:
        fd = os.open(lock_path(folder), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def effective_status(folder: Path, info: dict) -> dict:
    """``info`` (a ``run.json`` dict) with ``status: failed`` when it says running but nobody runs it."""
    if info.get("status") == "running" and not is_held(folder):
        return {**info, "status": "failed", "failure": DIED}
    return info
