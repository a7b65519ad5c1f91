"""``dataloupe pretrain``: parse, then call the self-supervised pretraining API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from dataloupe._cli.common import ProjectOpt, project_from
from dataloupe._cli.train import OverridesArg
from dataloupe.project import DataloupeError


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain_cmd)


def pretrain_cmd(
    overrides: OverridesArg = None,
    table: Annotated[Optional[list[str]], typer.Option(
        "--table", help="Table to learn from: TABLE or TABLE@REV (repeat for several). Every row with weight > 0"
                        " is used, undefined rows included; labels feed only the kNN monitor.")] = None,
    method: Annotated[Optional[str], typer.Option(
        "--method", help="simclr, moco, byol, simsiam, dino, barlowtwins or vicreg.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of pretrain keys.")] = None,
    run: Annotated[Optional[str], typer.Option(
        "--run", "--run-name",
        help="Run name (default: <method>-<n>). Under torchrun use --run-name (torchrun takes --run for --run-path).",
    )] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue run --run from its last checkpoint.")] = False,
    project: ProjectOpt = None,
) -> None:
    """Self-supervised pretraining of a backbone (works under torchrun); `train ... pretrained=` starts from it."""
    from dataloupe.train import pretrain
    from dataloupe.train._ssl_methods import METHODS

    ov = list(overrides or [])
    if method:
        ov.append(f"method={method}")
    if not resume:
        if not table:
            raise DataloupeError("pretrain needs --table TABLE (repeat for several tables)")
        if not (method or config or any(o.startswith("method=") for o in ov)):
            raise DataloupeError(f"pretrain needs --method METHOD (one of: {', '.join(METHODS)})")
    info = pretrain(project_from(project), table or None, str(config) if config else None, overrides=ov, run=run,
                    resume=resume)
    if info and os.environ.get("RANK", "0") == "0":
        knn, start = info.get("knn_top1"), info.get("knn_top1_start")
        said = "n/a (fewer than 2 labeled classes)" if knn is None else f"{knn:.4f}"
        if start is not None:
            said += f" (random init {start:.4f})"
        best = Path(project_from(project).runs_dir) / info["run"] / "checkpoints" / "best.pt"
        typer.echo(f"run {info['run']}: {info['status']}, {info['method']} epochs {info['epochs_done']}/"
                   f"{info['epochs']}, kNN top-1 {said}")
        typer.echo(f"backbone: {best} (train from it with pretrained={best})")
