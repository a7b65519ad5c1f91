"""Read handles on table revisions.

A :class:`Table` is one revision of one table and never changes; reading another
revision returns a new handle (``table.at(3)``). Writes go through the functions in
``_edit.py``, which always apply to the latest revision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataloupe._imagepath import image_file
from dataloupe._storage import Location
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import _store


@dataclass(frozen=True)
class TableRef:
    """``NAME`` or ``NAME@REV`` (revision number or tag) as written on the command line."""

    name: str
    revision: int | str | None = None

    @classmethod
    def parse(cls, text: str) -> "TableRef":
        name, sep, rev = text.partition("@")
        if not sep:
            return cls(name)
        if not rev:
            raise DataloupeError(f"missing revision after '@' in {text!r}")
        return cls(name, int(rev) if rev.isdigit() else rev)

    def __str__(self) -> str:
        return self.name if self.revision is None else f"{self.name}@{self.revision}"


@dataclass(frozen=True)
class Table:
    """One revision of a table.

    Attributes:
        project: the project store.
        name: table name.
        revision: this handle's revision number (1 = the import).
        latest_revision: the newest revision when the handle was opened.
        entry: this revision's log entry (message, created, parent, changes, classes).
    """

    project: Project
    name: str
    revision: int
    latest_revision: int
    entry: dict = field(repr=False)
    settings: dict = field(repr=False)

    @property
    def dir(self) -> Location:
        """The table's folder (local, or on the project's object store)."""
        return _store.table_dir(self.project, self.name)

    @property
    def classes(self) -> list[str]:
        return list(self.entry["classes"])

    @property
    def image_root(self) -> Path:
        return Path(self.settings["image_root"])

    @property
    def num_rows(self) -> int:
        return int(self.entry["rows"])

    @property
    def is_latest(self) -> bool:
        return self.revision == self.latest_revision

    def at(self, revision: int | str | None) -> "Table":
        """A handle on another revision of the same table."""
        return open_table(self.project, self.name, revision)

    def to_arrow(self, columns: list[str] | None = None, where: str | None = None) -> pa.Table:
        """The rows of this revision, sorted by ``id`` (``where``: SQL-like predicate)."""
        if columns is not None and "id" not in columns:
            columns = ["id", *columns]
        return _store.read_rows(self.dir, self.entry["lance_version"], columns, where)

    def schema(self) -> pa.Schema:
        return (self.dir / "data.lance").lance_dataset(self.entry["lance_version"]).schema

    def metadata_columns(self) -> list[str]:
        return [n for n in self.schema().names if n not in _store.CORE_COLUMNS]

    def image_path(self, rel: str) -> Path:
        """The file of stored path ``rel``; raises ``OutsideRootError`` if it leaves the image root."""
        return image_file(self.image_root, rel)

    def content_key(self) -> str:
        """Hash of (id, path) pairs and the image root: equal keys mean equal pixels.

        Label and weight edits keep the key, so a decoded-image cache survives them.
        """
        t = self.to_arrow(columns=["id", "path"])
        h = hashlib.sha256(str(self.image_root).encode())
        h.update(np.asarray(t["id"].to_numpy(), dtype=np.int64).tobytes())
        h.update("\n".join(t["path"].to_pylist()).encode())
        return h.hexdigest()[:24]

    def summary(self) -> dict:
        """Counts for ``table show``: rows, labeled, undefined, excluded, per-class counts."""
        t = self.to_arrow(columns=["label", "weight", "split"])
        return summarize(t, self.classes) | {
            "table": self.name,
            "revision": self.revision,
            "latest_revision": self.latest_revision,
            "message": self.entry["message"],
            "created": self.entry["created"],
            "image_root": str(self.image_root),
            "tags": self.entry.get("tags", []),
        }

    def log(self) -> list[dict]:
        """All revisions of the table up to the newest, oldest first."""
        return [_public_entry(e) for e in _store.read_log(self.dir)]


def summarize(t: pa.Table, classes: list[str]) -> dict:
    label = t["label"]
    weight = t["weight"]
    labeled_mask = pc.is_valid(label)
    counts = {c: 0 for c in classes}
    vc = pc.value_counts(pc.filter(label, labeled_mask)).to_pylist() if t.num_rows else []
    for item in vc:
        counts[item["values"]] = int(item["counts"])
    splits = {d["values"]: int(d["counts"]) for d in pc.value_counts(t["split"]).to_pylist()} \
        if t.num_rows else {}
    return {
        "rows": t.num_rows,
        "labeled": int(pc.sum(labeled_mask).as_py() or 0),
        "undefined": int(pc.sum(pc.is_null(label)).as_py() or 0),
        "excluded": int(pc.sum(pc.equal(weight, 0)).as_py() or 0),
        "classes": counts,
        "splits": splits,
    }


def _public_entry(e: dict) -> dict:
    return {k: e[k] for k in ("revision", "message", "created", "parent", "changes", "rows")} | {
        "tags": e.get("tags", [])
    }


def open_table(project: Project, name: str, revision: int | str | None = None) -> Table:
    """Open ``name`` at ``revision`` (int, tag string, or None for the latest).

    Example:
        >>> t = open_table(Project.open(), "cm-train")  # doctest: +SKIP
        >>> t.summary()["labeled"]                       # doctest: +SKIP
        200
    """
    tdir = _store.require_table(project, name)
    log = _store.read_log(tdir)
    latest = log[-1]["revision"]
    if revision is None:
        entry = log[-1]
    elif isinstance(revision, str) and not revision.isdigit():
        found = [e for e in log if revision in e.get("tags", [])]
        if not found:
            raise DataloupeError(f"table {name!r} has no tag {revision!r}")
        entry = found[-1]
    else:
        rev = int(revision)
        if not 1 <= rev <= latest:
            raise DataloupeError(f"table {name!r} has no revision {rev} (revisions 1..{latest})")
        entry = log[rev - 1]
    return Table(project, name, entry["revision"], latest, entry, _store.read_settings(tdir))


def open_ref(project: Project, ref: str | TableRef) -> Table:
    """Open ``"NAME"`` or ``"NAME@REV"``."""
    ref = TableRef.parse(ref) if isinstance(ref, str) else ref
    return open_table(project, ref.name, ref.revision)


def list_tables(project: Project) -> list[dict]:
    """One dict per table: name, latest revision, rows, classes, last message."""
    out = []
    for name in _store.list_table_names(project):
        e = _store.read_log(_store.table_dir(project, name))[-1]
        out.append({"name": name, "revision": e["revision"], "rows": e["rows"],
                    "classes": e["classes"], "message": e["message"], "created": e["created"]})
    return out
