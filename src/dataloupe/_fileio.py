"""Atomic file writes shared by every stage: write a temporary file, fsync, rename.

A reader then sees either the old file or the new one, never a half-written file, even
if the writer is killed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any


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


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (the folder entry is fsynced too).

    On failure (a full disk) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json_atomic(path: Path, obj: Any, *, indent: int = 1) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically."""
    write_bytes_atomic(path, json.dumps(obj, indent=indent, default=str).encode())
