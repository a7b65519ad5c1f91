"""The project store: one folder holding a project's tables, runs and caches.

The folder comes from an explicit argument, else the ``DATALOUPE_PROJECT`` environment
variable, else ``./dataloupe-project``. It is created on first use.

Example:
    >>> from dataloupe.project import Project
    >>> p = Project.open("/tmp/demo-project")
    >>> p.tables_dir.name
    'tables'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "DATALOUPE_PROJECT"
DEFAULT_DIR = "dataloupe-project"


# Table and run names: one rule everywhere (CLI, API, dashboard). ``fullmatch``, so a
# trailing newline is refused too (``$`` would allow one).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class DataloupeError(Exception):
    """An error with a one-line message meant for the user (the CLI prints it as is)."""


def check_name(name: str, what: str = "table") -> str:
    """Return ``name`` if it is a valid table/run name, else raise :class:`DataloupeError`.

    Example:
        >>> check_name("cm-train")
        'cm-train'
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise DataloupeError(f"invalid {what} name {name!r}: use letters, digits, '_', '-', '.' (not first),"
                             " at most 128 characters")
    return name


@dataclass(frozen=True)
class Project:
    """A project store on disk.

    Attributes:
        root: the project folder (absolute).
    """

    root: Path

    @classmethod
    def open(cls, path: str | os.PathLike | None = None) -> "Project":
        """Open (creating if needed) the project at ``path``, ``$DATALOUPE_PROJECT`` or the default."""
        chosen = path if path is not None else os.environ.get(ENV_VAR) or DEFAULT_DIR
        root = Path(chosen).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise DataloupeError(f"project path {root} exists and is not a folder")
        for sub in ("tables", "runs", "cache"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def images_dir(self, table: str) -> Path:
        """Where images that an importer had to write (e.g. from IDX files) are stored."""
        return self.root / "images" / check_name(table)
