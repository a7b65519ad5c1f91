"""On-disk layout of one table, its revision log, and the commit protocol.

A table lives in ``tables/<name>/``:

- ``data.lance``      the Lance dataset; every revision is one Lance version (full rewrite
                      of the small columns, so every version reads equally fast);
- ``revisions.json``  the revision log, the source of truth: revision -> Lance version,
                      message, time, parent, change summary, classes;
- ``table.json``      table-level settings that are not versioned: image root, next id;
- ``.lock``           an ``fcntl`` lock held across a whole read-modify-commit.

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
import json
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from dataloupe._fileio import write_failure, write_json_atomic
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


def table_dir(project: Project, name: str) -> Path:
    return project.tables_dir / check_table_name(name)


def require_table(project: Project, name: str) -> Path:
    d = table_dir(project, name)
    if not (d / "revisions.json").is_file():
        known = ", ".join(list_table_names(project)) or "none"
        raise DataloupeError(f"unknown table {name!r} (known: {known})")
    return d


def list_table_names(project: Project) -> list[str]:
    if not project.tables_dir.is_dir():
        return []
    return sorted(p.name for p in project.tables_dir.iterdir() if (p / "revisions.json").is_file())


def read_log(tdir: Path) -> list[dict]:
    with open(tdir / "revisions.json") as f:
        return json.load(f)["revisions"]


def read_settings(tdir: Path) -> dict:
    with open(tdir / "table.json") as f:
        return json.load(f)


def write_settings(tdir: Path, settings: dict) -> None:
    write_json_atomic(tdir / "table.json", settings)


@contextlib.contextmanager
def write_lock(tdir: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the table's exclusive write lock (released by the OS if the process dies)."""
    tdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(tdir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
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
    tdir: Path,
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
    uri = tdir / "data.lance"
    mode = "overwrite" if uri.exists() else "create"
    import lance  # noqa: PLC0415

    parent = log[-1]["revision"] if log else None
    try:
        ds = lance.write_dataset(rows, uri, mode=mode, data_storage_version="stable")
    except OSError as e:  # e.g. a full disk: the log still names the previous revision, which stays intact
        raise DataloupeError(f"could not write table {tdir.name!r} ({write_failure(uri, e)}); nothing was changed"
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
    try:
        write_json_atomic(tdir / "revisions.json", {"revisions": [*log, entry]})
    except OSError as e:
        raise DataloupeError(f"could not write table {tdir.name!r} ({write_failure(tdir, e)}); nothing was changed"
                             f"{f', revision {parent} is still the latest' if parent else ''}") from None
    return entry


def write_log(tdir: Path, log: list[dict]) -> None:
    """Rewrite the log (only to change non-historical fields such as tags)."""
    write_json_atomic(tdir / "revisions.json", {"revisions": log})


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


def read_rows(tdir: Path, lance_version: int, columns: list[str] | None = None,
              where: str | None = None) -> pa.Table:
    import lance  # noqa: PLC0415

    ds = lance.dataset(tdir / "data.lance", version=lance_version)
    try:
        t = ds.to_table(columns=columns, filter=None if where is None else whole_predicate(where))
    except (ValueError, OSError) as e:
        raise DataloupeError(f"invalid predicate {where!r}: {_first_line(e)}") from None
    return t


def _first_line(e: Exception) -> str:
    msg = str(e).split("\n")[0]
    # Lance appends the Rust source location; the user has no use for it.
    return re.sub(r",\s*/\S+\.rs:\d+:\d+\s*$", "", msg)
