"""Atomic file writes shared by every stage: write a temporary file, fsync, rename.

A reader then sees either the old file or the new one, never a half-written file, even
if the writer is killed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (the folder entry is fsynced too)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json_atomic(path: Path, obj: Any, *, indent: int = 1) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically."""
    write_bytes_atomic(path, json.dumps(obj, indent=indent, default=str).encode())
