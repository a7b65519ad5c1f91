"""Options and helpers shared by all command modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dataloupe.project import Project

ProjectOpt = Annotated[
    Optional[Path],
    typer.Option("--project", help="Project folder (default: $DATALOUPE_PROJECT or ./dataloupe-project)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def project_from(path: Path | None) -> Project:
    return Project.open(path)


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))
