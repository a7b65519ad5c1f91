"""Atomic file writes shared by every stage: write a temporary file, fsync, rename.

A reader then sees either the old file or the new one, never a half-written file, even
if the writer is killed. This is the one place that renames a temporary file (or
dataset folder) into place: :func:`write_bytes_atomic` / :func:`write_json_atomic` for
bytes, :func:`atomic_path` for writers that want a path (numpy, matplotlib, torch),
:func:`replace_file` for a file built in place (a memory map), :func:`publish_dir` for a finished folder (a Lance dataset).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator


def is_disk_full(e: BaseException) -> bool:
    """True for "no space left on device", whether raised by Python, Lance or torch's writer."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "os error 28" in text


def write_failure(path: Path, e: BaseException) -> str:
    """Why writing under ``path`` failed, in words: "disk full (N MB free on <folder>)" or the error."""
    if is_disk_full(e) or _nearly_full(Path(path)):
        try:
            free = shutil.disk_usage(_existing_parent(Path(path))).free
        except OSError:
            free = 0
        return f"disk full: {free / 1e6:.1f} MB free under {_existing_parent(Path(path))}"
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _nearly_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(_existing_parent(path)).free < 1_000_000
    except OSError:
        return False


def temp_path(path: Path) -> Path:
    """The temporary name :func:`atomic_path` writes ``path`` under: hidden, unique to this
    process and thread, ending ``.tmp<pid>`` plus ``path``'s suffix (numpy and matplotlib
    pick the format from it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{threading.get_ident()}.tmp{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path, tmp: Path | None = None) -> Iterator[Path]:
    """Write ``path`` atomically through a temporary path: the caller writes the file at the
    yielded path; when the block ends it is fsynced and renamed over ``path`` (the folder
    entry is fsynced too). If the block raises (a full disk), the temporary file is removed
    and ``path`` is left as it was.

    Args:
        path: the file to replace.
        tmp: the temporary name to use (default :func:`temp_path`).

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.npz"
        >>> with atomic_path(out) as tmp:
        ...     np.savez(tmp, x=np.arange(3))
        >>> out.is_file()
        True
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else temp_path(path)
    try:
        yield tmp
        replace_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_file(tmp: Path, path: Path) -> None:
    """Move the finished file ``tmp`` over ``path``: fsync it, rename, fsync the folder.

    For files a writer built in place under a temporary name (a memory-mapped cache);
    prefer :func:`atomic_path`, which also removes ``tmp`` on failure.
    """
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(Path(path).parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (the folder entry is fsynced too).

    On failure (a full disk) the temporary file is removed and ``path`` is left as it was.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json_atomic(path: Path, obj: Any, *, indent: int = 1, allow_nan: bool = True) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically (``allow_nan=False``: NaN/inf raise)."""
    write_bytes_atomic(path, json.dumps(obj, indent=indent, default=str, allow_nan=allow_nan).encode())


def publish_dir(tmp: Path, path: Path) -> None:
    """Move the finished folder ``tmp`` (e.g. a Lance dataset) into place at ``path``.

    Every file under ``tmp`` is fsynced first; an existing ``path`` is moved aside, ``tmp``
    renamed into its place, and the old folder removed, so a reader sees the old dataset
    or the new one. ``tmp`` must sit in ``path``'s folder (one file system).
    """
    tmp, path = Path(tmp), Path(path)
    for root, _dirs, files in os.walk(tmp):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
