"""Run the dashboard with uvicorn, applying the network-safety rules."""

from __future__ import annotations

import sys
import threading
import webbrowser
from dataclasses import dataclass

from dataloupe._netsafety import access_rule, check_port_free
from dataloupe.project import DataloupeError, Project
from dataloupe.ui._app import LOCAL_HOSTS, create_app


@dataclass
class DashboardConfig:
    """How `dataloupe ui` serves the dashboard (the prediction server's settings are
    :class:`dataloupe.serve.ServeConfig`)."""

    host: str = "127.0.0.1"  # interface to bind; anything but loopback needs a token
    port: int = 8765  # TCP port
    token: str | None = None  # required on every /api call when set
    open_browser: bool = False  # open the dashboard in the default browser once up


def resolve_security(cfg: DashboardConfig) -> tuple[str | None, tuple[str, ...] | None, bool]:
    """``(token, allowed Host headers, token was generated)`` for a server config.

    Loopback without a token: only loopback ``Host`` headers are accepted (DNS rebinding).
    Any other interface: a token is required; when none is given one is generated.
    """
    if not 0 < cfg.port < 65536:
        raise DataloupeError(f"port must be 1..65535, got {cfg.port}")
    access = access_rule(cfg.host, cfg.token)
    return access.token, LOCAL_HOSTS if access.loopback_only else None, access.generated


def serve(project: Project, cfg: DashboardConfig, echo=print) -> None:
    """Serve the dashboard for ``project`` until interrupted."""
    import uvicorn

    token, hosts, generated = resolve_security(cfg)
    check_port_free(cfg.host, cfg.port)  # before printing an address that another program answers
    app = create_app(project, token=token, allowed_hosts=hosts)
    shown = "localhost" if cfg.host in ("127.0.0.1", "::1") else cfg.host
    url = f"http://{shown}:{cfg.port}/" + (f"?token={token}" if token else "")
    if generated:
        echo(f"--host {cfg.host} is reachable from other machines: every API call needs a token.")
        echo(f"generated token: {token}")
    echo(f"dataloupe dashboard for {project.root}")
    echo(f"open {url}")
    sys.stdout.flush()  # the URL and token must show before the server blocks
    if cfg.open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    threading.Thread(target=app.state.prewarm, daemon=True).start()
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
