"""The one rule for image files of a table: they lie inside the table's image root.

A stored path is relative to the root; it is joined to the root and resolved (symlinks
followed), and it is refused unless the result is still inside the root. Importers,
training, collection, the dashboard and the decoded cache all apply this function, so a
``../`` path or a symlink out of the root is refused everywhere, never read somewhere.

Example:
    >>> from pathlib import Path
    >>> image_file(Path("/data"), "cat/1.jpg")  # doctest: +SKIP
    PosixPath('/data/cat/1.jpg')
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from dataloupe.project import DataloupeError


class OutsideRootError(DataloupeError):
    """A stored image path resolves outside the table's image root."""


def image_file(root: str | os.PathLike, rel: str) -> Path:
    """``root / rel`` resolved; raises :class:`OutsideRootError` when it leaves ``root``.

    The file need not exist (a missing file is the reader's business, with its own reason).
    """
    base = Path(root).resolve()
    if PurePosixPath(rel).is_absolute():
        raise OutsideRootError(f"{rel}: absolute path (paths are relative to the image root {base})")
    full = (base / rel).resolve()
    if full == base or not full.is_relative_to(base):
        raise OutsideRootError(f"{rel}: outside the image root {base}")
    return full
