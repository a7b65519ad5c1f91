"""The project store: one folder holding a project's tables, runs and caches.

The folder comes from an explicit argument, else the ``DATALOUPE_PROJECT`` environment
variable, else ``./dataloupe-project``. It is created on first use.

A project may keep its tables on an object store (``s3://bucket/prefix``, ``gs://``,
``az://``: see ``_storage.py`` for the ``storage_options`` read from the environment).
Runs (checkpoints, ``run.json``, metrics), caches and loops then stay in a local folder
given by ``local_dir`` or ``DATALOUPE_LOCAL_DIR``; without one the project is refused.

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

from dataloupe._storage import Location, StorageError, is_uri, storage_options_from_env

ENV_VAR = "DATALOUPE_PROJECT"
LOCAL_ENV_VAR = "DATALOUPE_LOCAL_DIR"  # runs and caches of a project whose tables are on an object store
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
    """A project store.

    Attributes:
        root: the local project folder (absolute): runs, caches, loops, and the tables
            unless ``store`` is given.
        store: where the tables live when not under ``root``: an object-store
            :class:`~dataloupe._storage.Location` (``s3://bucket/prefix``), else None.
    """

    root: Path
    store: Location | None = None

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, local_dir: str | os.PathLike | None = None,
             storage_options: dict | None = None) -> "Project":
        """Open (creating if needed) the project at ``path``, ``$DATALOUPE_PROJECT`` or the default.

        Args:
            path: a local folder, or an object-store URI for the tables
                (``s3://bucket/prefix``).
            local_dir: with an object-store ``path``, the local folder for runs and caches
                (default ``$DATALOUPE_LOCAL_DIR``; required).
            storage_options: Lance options for the object store, merged over those read
                from the environment (``AWS_*``, ``DATALOUPE_STORAGE_OPTIONS``).

        Example:
            >>> Project.open("s3://bucket/team", local_dir="/tmp/team-runs").uri  # doctest: +SKIP
            's3://bucket/team'
        """
        chosen = path if path is not None else os.environ.get(ENV_VAR) or DEFAULT_DIR
        store = None
        if is_uri(chosen):
            local = local_dir if local_dir is not None else os.environ.get(LOCAL_ENV_VAR)
            if not local:
                raise DataloupeError(
                    f"project {chosen} keeps its tables on an object store; runs, checkpoints and caches need a"
                    f" local folder: set {LOCAL_ENV_VAR} (or pass local_dir=)")
            if is_uri(local):
                raise DataloupeError(f"{LOCAL_ENV_VAR} must be a local folder, not {local}: runs, checkpoints and"
                                     " caches are not stored on object storage (only tables are)")
            try:
                opts = storage_options_from_env(str(chosen)) | dict(storage_options or {})
                store = Location(str(chosen), opts, Path(local).expanduser().resolve() / "locks")
            except StorageError as e:
                raise DataloupeError(str(e)) from None
            chosen = local
        root = Path(chosen).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise DataloupeError(f"project path {root} exists and is not a folder")
        for sub in ("runs", "cache") + (("locks",) if store else ("tables",)):
            (root / sub).mkdir(parents=True, exist_ok=True)
        return cls(root, store)

    @property
    def uri(self) -> str:
        """Where the project is: its object-store URI, or its local folder."""
        return self.store.uri if self.store is not None else str(self.root)

    @property
    def tables_dir(self) -> Location:
        """The folder of the tables (local or on the object store)."""
        return self.store / "tables" if self.store is not None else Location(str(self.root / "tables"))

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def images_dir(self, table: str) -> Path:
        """Where images that an importer had to write (e.g. from IDX files) are stored."""
        return self.root / "images" / check_name(table)
