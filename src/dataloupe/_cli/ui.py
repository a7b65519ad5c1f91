"""``dataloupe ui``: the dashboard."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dataloupe._cli.common import ProjectOpt, project_from


def register(app: typer.Typer) -> None:
    @app.command("ui")
    def ui(
        port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8765,
        host: Annotated[str, typer.Option("--host", help="Interface to bind; anything but 127.0.0.1 needs a token.")] = "127.0.0.1",
        token: Annotated[Optional[str], typer.Option("--token", help="Require this token on every API call (generated when --host is not loopback).")] = None,
        open_browser: Annotated[bool, typer.Option("--open", help="Open the dashboard in the default browser.")] = False,
        project: ProjectOpt = None,
    ) -> None:
        """Serve the dashboard: embedding map, filters, image grid, edits as revisions."""
        from dataloupe.ui import DashboardConfig, serve

        serve(project_from(project), DashboardConfig(host=host, port=port, token=token, open_browser=open_browser),
              echo=typer.echo)
