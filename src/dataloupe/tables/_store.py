"""On-disk layout of one table, its revision log, and the commit protocol.

A table lives in ``tables/<name>/``:

- ``data.lance``      the Lance dataset; every revision is one Lance version (full rewrite
                      of the small columns, so every version reads equally fast);
- ``revisions.json``  the revision log, the source of truth: revision -> Lance version,
                      message, time, parent, change summary, classes;
- ``table.json``      table-level settings that are not versioned: image root, next id;
- ``.lock``           an ``fcntl`` lock held across a whole read-modify-commit.

The folder may be on an object store (a project at ``s3://bucket/prefix``): every file
here is read and written through :class:`~dataloupe._storage.Location`, which passes the
project's ``storage_options`` to Lance and to ``pyarrow.fs``. The lock is then a local
file under the project's local folder (``locks/``), which serialises writers on one
machine; writers on different machines are caught at commit time instead (the log is
read again just before it is replaced, and a newer revision there refuses the commit),
so one of two racing commits fails cleanly and the other lands.

Why our own log on top of Lance versions: a commit is "Lance version written, then log
entry written atomically (temp file + fsync + rename)". A process killed between the two
leaves an orphan Lance version that no revision points to, so the previous latest
revision stays the latest, readable and intact. Writers are serialised by the lock, so two
concurrent edits both land (the second on top of the first) or, if the lock cannot be had
in time, the second gets a clear conflict error and nothing is written.

Lance is imported where it is used, so the stages above (data, train) also load on a
machine that trains from arrays without pylance installed (e.g. a GPU box for benchmarks).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from dataloupe._fileio import write_failure
from dataloupe._storage import Location
from dataloupe.project import DataloupeError, Project
from dataloupe.project import check_name as _check_name

LOCK_TIMEOUT_S = 60.0
CORE_COLUMNS = ("id", "path", "label", "weight", "split")


class TableConflictError(DataloupeError):
    """Another process holds the table's write lock; retry later."""


class StaleRevisionError(DataloupeError):
    """The edit was made against a revision that is no longer the latest (checked under the lock)."""


def check_table_name(name: str) -> str:
    """``name`` if it is a valid table name (the project's name rule), else :class:`DataloupeError`."""
    return _check_name(name, "table")


def _loc(tdir: Location | Path) -> Location:
    return tdir if isinstance(tdir, Location) else Location(str(tdir))


def table_dir(project: Project, name: str) -> Location:
    return project.tables_dir / check_table_name(name)


def has_table(project: Project, name: str) -> bool:
    """True if ``name`` is a valid table name and the table exists (has a revision log)."""
    try:
        return (table_dir(project, name) / "revisions.json").is_file()
    except DataloupeError:
        return False


def require_table(project: Project, name: str) -> Location:
    d = table_dir(project, name)
    if not (d / "revisions.json").is_file():
        known = ", ".join(list_table_names(project)) or "none"
        raise DataloupeError(f"unknown table {name!r} (known: {known})")
    return d


def list_table_names(project: Project) -> list[str]:
    return sorted(p.name for p in project.tables_dir.iterdir() if (p / "revisions.json").is_file())


def read_log(tdir: Location | Path) -> list[dict]:
    return (_loc(tdir) / "revisions.json").read_json()["revisions"]


def read_settings(tdir: Location | Path) -> dict:
    return (_loc(tdir) / "table.json").read_json()


def write_settings(tdir: Location | Path, settings: dict) -> None:
    (_loc(tdir) / "table.json").write_json_atomic(settings)


@contextlib.contextmanager
def write_lock(tdir: Location | Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the table's exclusive write lock (released by the OS if the process dies)."""
    tdir = _loc(tdir)
    tdir.mkdir()
    lock = tdir.lock_file()
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + (LOCK_TIMEOUT_S if timeout is None else timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TableConflictError(
                        f"table {tdir.name!r} is being written by another process; "
                        "nothing was changed, retry"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def commit(
    tdir: Location | Path,
    rows: pa.Table,
    *,
    message: str,
    changes: dict,
    classes: list[str],
    log: list[dict],
    extra: dict | None = None,
) -> dict:
    """Write ``rows`` as a new revision; the caller holds :func:`write_lock`.

    ``rows`` must be sorted by ``id``. Returns the new log entry.
    """
    if not message or not message.strip():
        raise DataloupeError("a revision needs a message (-m)")
    tdir = _loc(tdir)
    uri = tdir / "data.lance"
    mode = "overwrite" if uri.exists() else "create"
    parent = log[-1]["revision"] if log else None
    try:
        ds = uri.write_lance(rows, mode=mode, data_storage_version="stable")
    except OSError as e:  # e.g. a full disk: the log still names the previous revision, which stays intact
        raise DataloupeError(f"could not write table {tdir.name!r} ({_why(uri, e)}); nothing was changed"
                             f"{f', revision {parent} is still the latest' if parent else ''}") from None
    entry = {
        "revision": (parent or 0) + 1,
        "lance_version": ds.version,
        "message": message.strip(),
        "created": now_iso(),
        "parent": parent,
        "changes": changes,
        "classes": list(classes),
        "rows": rows.num_rows,
        **(extra or {}),
    }
    if not tdir.is_local:
        _check_not_overtaken(tdir, parent)
    try:
        (tdir / "revisions.json").write_json_atomic({"revisions": [*log, entry]})
    except OSError as e:
        raise DataloupeError(f"could not write table {tdir.name!r} ({_why(tdir, e)}); nothing was changed"
                             f"{f', revision {parent} is still the latest' if parent else ''}") from None
    return entry


def _check_not_overtaken(tdir: Location, parent: int | None) -> None:
    """Refuse the commit if another machine committed since ``parent`` (object stores only)."""
    found = (tdir / "revisions.json").is_file()
    latest = read_log(tdir)[-1]["revision"] if found else None
    if latest != parent:
        raise TableConflictError(f"table {tdir.name!r} was changed by another writer meanwhile (revision {latest}"
                                 f" is now the latest, this edit started from {parent}); nothing was changed, retry")


def _why(loc: Location, e: BaseException) -> str:
    return write_failure(loc.path, e) if loc.is_local else (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def write_log(tdir: Location | Path, log: list[dict]) -> None:
    """Rewrite the log (only to change non-historical fields such as tags)."""
    (_loc(tdir) / "revisions.json").write_json_atomic({"revisions": log})


def whole_predicate(where: str) -> str:
    """``where`` made safe to hand to Lance's filter: the whole text must be one expression.

    Lance parses ``SELECT ... WHERE <where>`` and silently ignores what follows the first
    complete expression (``1=1; DROP TABLE x`` selects every row; ``a = 1) OR (b = 2``
    selects by ``a = 1`` only). So: parentheses must balance outside quoted text, and the
    predicate is evaluated inside its own parentheses, where trailing text is a parse error.

    Example:
        >>> whole_predicate("label = 'a'")
        "(label = 'a'\n)"
    """
    if not where or not where.strip():
        raise DataloupeError("empty predicate (--where)")
    depth, quote = 0, None
    for ch in where:
        if quote:
            if ch == quote:
                quote = None  # a doubled quote ('') closes and reopens: same result
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise DataloupeError(f"invalid predicate {where!r}: ')' without a matching '('")
        elif ch == ";":
            raise DataloupeError(f"invalid predicate {where!r}: ';' is not allowed (one expression only)")
    if quote:
        raise DataloupeError(f"invalid predicate {where!r}: unterminated {quote}quoted{quote} text")
    if depth:
        raise DataloupeError(f"invalid predicate {where!r}: '(' without a matching ')'")
    return f"({where}\n)"  # newline: a trailing -- comment cannot swallow the parenthesis


def read_rows(tdir: Location | Path, lance_version: int, columns: list[str] | None = None,
              where: str | None = None) -> pa.Table:
    ds = (_loc(tdir) / "data.lance").lance_dataset(lance_version)
    try:
        t = ds.to_table(columns=columns, filter=None if where is None else whole_predicate(where))
    except (ValueError, OSError) as e:
        raise DataloupeError(f"invalid predicate {where!r}: {_first_line(e)}") from None
    return t


def _first_line(e: Exception) -> str:
    msg = str(e).split("\n")[0]
    # Lance appends the Rust source location; the user has no use for it.
    return re.sub(r",\s*/\S+\.rs:\d+:\d+\s*$", "", msg)
