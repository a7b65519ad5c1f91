"""``dataloupe.show``: open the dashboard on a table and a selection from Python.

Like ``fiftyone.launch_app`` or ``spotlight.show``: starts the dashboard server in a
background thread (loopback only, no token) and opens the browser on the map and grid of
the table under a run, with ``ids`` selected.

Example:
    >>> import dataloupe
    >>> s = dataloupe.show("cm-train", ids=[12, 40, 977])   # doctest: +SKIP
    >>> s.url                                               # doctest: +SKIP
    'http://127.0.0.1:8765/#/run/cm-r1?table=cm-train&sel=12,40,977'
    >>> s.stop()                                            # doctest: +SKIP
"""

from __future__ import annotations

import socket
import threading
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from dataloupe.project import DataloupeError, Project
from dataloupe.runs import metrics_tables
from dataloupe.ui import _runs


@dataclass
class Session:
    """A dashboard started by :func:`show`; ``stop()`` ends its server."""

    url: str
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def show(table: str, *, ids: list[int] | None = None, run: str | None = None,
         project: Project | str | Path | None = None, port: int | None = None,
         open_browser: bool = True) -> Session:
    """Serve the dashboard and open it on ``table`` under ``run`` with ``ids`` selected.

    Args:
        table: the table to show.
        ids: sample ids to select (at most 5,000 travel in the URL).
        run: the run whose map and metrics to show (default: the newest run with metrics
            for ``table``).
        project: the project (a :class:`Project` or its folder; default as ``Project.open``).
        port: TCP port on 127.0.0.1 (default: a free one).
        open_browser: open the URL in the default browser.

    Returns:
        A :class:`Session` with the ``url``; the server runs until ``stop()`` or exit.
    """
    import uvicorn  # noqa: PLC0415

    from dataloupe.ui._app import LOCAL_HOSTS, create_app  # noqa: PLC0415

    p = project if isinstance(project, Project) else Project.open(project)
    if run is None:
        runs = [r for r in _runs.run_infos(p) if table in (r.get("metrics_tables") or [])]
        if not runs:
            raise DataloupeError(f"no run has metrics for table {table!r}: train and collect one first "
                                 f"(`dataloupe train ...`, `dataloupe collect RUN --table {table}`)")
        run = runs[-1]["run"]
    elif table not in metrics_tables(p, run):
        raise DataloupeError(f"run {run!r} has no metrics for table {table!r}")
    ids = [int(i) for i in (ids or [])]
    if len(ids) > 5000:
        raise DataloupeError(f"{len(ids)} ids are too many for the URL (at most 5000); filter in the dashboard instead")
    port = port or _free_port()
    app = create_app(p, allowed_hosts=LOCAL_HOSTS)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise DataloupeError(f"the dashboard could not start on port {port}")
    url = f"http://127.0.0.1:{port}/#/run/{quote(run)}?table={quote(table)}" + (f"&sel={','.join(map(str, ids))}" if ids else "")
    if open_browser:
        webbrowser.open(url)
    return Session(url, server, thread)
