"""``dataloupe loop``: the automated train -> analyse -> fix -> retrain loop."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated, Optional

import typer

from dataloupe._cli.common import JsonOpt, ProjectOpt, print_json, project_from


def register(app: typer.Typer) -> None:
    @app.command("loop")
    def loop(
        train: Annotated[str, typer.Option("--train", help="Training table (its latest revision is edited).")],
        val: Annotated[str, typer.Option("--val", help="Validation table[@REV] (only picks checkpoints and reports).")],
        policy: Annotated[str, typer.Option("--policy", help="Policy name (hackathon, default) or YAML path.")] = "default",
        iterations: Annotated[Optional[int], typer.Option(help="Iterations (default: the policy's).")] = None,
        name: Annotated[Optional[str], typer.Option(help="Loop name (default TRAIN-POLICY).")] = None,
        resume: Annotated[bool, typer.Option(help="Continue a killed or finished loop of that name.")] = False,
        project: ProjectOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Run the loop; prints a table of val top-1 per revision (or JSON with --json)."""
        from dataloupe.loop import run_loop, summary_table

        log = (lambda m: typer.echo(m, err=True)) if as_json else typer.echo
        # With --json, standard output carries only the JSON: training's epoch lines go to stderr.
        quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
        with quiet:
            res = run_loop(project_from(project), train=train, val=val, policy=policy,
                           iterations=iterations, name=name, resume=resume, log=log)
        if as_json:
            print_json(res.to_dict())
        else:
            typer.echo("\n" + summary_table(res))
            typer.echo(f"\nsaved: {res.folder}/summary.txt, accuracy.png; inspect edits with "
                       f"`dataloupe table log {train}` and `dataloupe table diff {train} A B`")
