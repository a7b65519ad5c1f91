"""Options and helpers shared by all command modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dataloupe.project import Project

ProjectOpt = Annotated[  # text, not Path: Path would turn s3://bucket into s3:/bucket
    Optional[str],
    typer.Option("--project", help="Project folder, or s3://bucket/prefix for tables on an object store (runs then"
                                   " go to $DATALOUPE_LOCAL_DIR) (default: $DATALOUPE_PROJECT or ./dataloupe-project)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def project_from(path: str | Path | None) -> Project:
    return Project.open(path)


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))
