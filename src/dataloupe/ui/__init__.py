"""The dashboard: a FastAPI server and a static WebGL front-end served by the same process.

Example:
    >>> from dataloupe.project import Project
    >>> from dataloupe.ui import DashboardConfig, create_app, serve
    >>> app = create_app(Project.open("/tmp/p"))               # doctest: +SKIP
    >>> serve(Project.open("/tmp/p"), DashboardConfig(port=8765))  # doctest: +SKIP
"""

from dataloupe.ui._actions import UI_ACTIONS, ActionRequest, apply_action
from dataloupe.ui._app import create_app
from dataloupe.ui._points import build_points, decode
from dataloupe.ui._server import DashboardConfig, resolve_security, serve
from dataloupe.ui._show import Session, show

__all__ = ["UI_ACTIONS", "ActionRequest", "DashboardConfig", "apply_action", "build_points",
           "create_app", "decode", "resolve_security", "serve", "Session", "show"]
