"""``dataloupe demo``: the README's main job (the loop on a Fashion-MNIST scenario)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dataloupe._cli.common import ProjectOpt, print_json, project_from


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        fashion_dir: Annotated[Optional[Path], typer.Option(help="Folder with the Fashion-MNIST IDX files.")] = None,
        per_class: Annotated[int, typer.Option(help="Labels kept per class.")] = 20,
        flip: Annotated[float, typer.Option(help="Share of the kept labels flipped to a wrong class.")] = 0.1,
        pool: Annotated[int, typer.Option(help="Undefined (unlabeled) training images.")] = 6000,
        val_size: Annotated[int, typer.Option(help="Validation images (from the test split).")] = 2000,
        policy: Annotated[str, typer.Option(help="Loop policy.")] = "fashion-mnist-demo",
        iterations: Annotated[Optional[int], typer.Option(help="Iterations (default: the policy's).")] = None,
        name: Annotated[Optional[str], typer.Option(
            help="Loop name; tables are NAME-train / NAME-val (default: demo, or demo-s<seed>).")] = None,
        seed: Annotated[int, typer.Option(
            help="Draws the scenario: labeled rows, flipped labels, pool and validation sample.")] = 0,
        oracle_epochs: Annotated[int, typer.Option(help="Epochs of the oracle (every true label).")] = 10,
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object (logs go to stderr).")] = False,
        project: ProjectOpt = None,
    ) -> None:
        """Run the loop on Fashion-MNIST with few, partly wrong labels; measure it against the
        baseline (the labels given) and the oracle (every true label)."""
        from dataloupe.loop import summary_table
        from dataloupe.loop._demo import fashion_mnist_demo

        p = project_from(project)
        log = (lambda m: typer.echo(m, err=True)) if json_out else typer.echo
        # With --json, standard output carries only the JSON: training's epoch lines go to stderr.
        quiet = contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext()
        with quiet:
            r = fashion_mnist_demo(p, fashion_dir=fashion_dir, per_class=per_class, flip=flip, pool=pool,
                                   val_size=val_size, policy=policy, iterations=iterations, name=name,
                                   seed=seed, oracle_epochs=oracle_epochs, log=log)
        if json_out:
            print_json(r.to_json())
            return
        typer.echo("\n" + summary_table(r.loop))
        typer.echo("\n" + measured_table(r))
        s = r.score
        prec = "-" if s["precision"] is None else f"{100 * s['precision']:.1f}%"
        typer.echo(f"\nautomatic labels: {s['auto_labeled']} of {s['pool']} pool images "
                   f"({100 * s['coverage']:.1f}% coverage), {prec} correct against the hidden truth")
        cpu = sum(row["cpu_minutes"] for row in r.loop.iterations)
        wall = sum(row["minutes"] for row in r.loop.iterations)
        typer.echo(f"loop time: {wall:.1f} min wall, {cpu:.1f} CPU-min")
        last = r.loop.iterations[-1] if r.loop.iterations else None
        name = r.loop.name
        typer.echo(f"\nproject: {p.root}\nsummary: {r.loop.folder}/summary.txt, accuracy.png")
        if r.report:
            typer.echo(f"report:  {r.report}")
        typer.echo("look further:\n"
                   f"  dataloupe table log {name}-train --project {p.uri}\n"
                   + (f"  dataloupe table diff {name}-train {last['revision']} {last['next_revision']}"
                      f" --project {p.uri}\n" if last else "")
                   + f"  dataloupe ui --project {p.uri}")


def measured_table(r) -> str:
    """Baseline / oracle / loop side by side, with the gap closed and the automatic labels' truth."""
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    gap = "-" if r.gap_closed is None else f"{r.gap_closed:.2f}"
    s = r.score
    return "\n".join([
        f"seed {r.seed}: val top-1 (the loop's last iteration counts)",
        f"  baseline (the labels given only)     {pct(r.baseline):>8}",
        f"  oracle   (every row, its true label) {pct(r.oracle):>8}",
        f"  loop                                 {pct(r.loop_top1):>8}   gap closed {gap}",
        f"  automatic labels: {pct(s.get('precision'))} correct at {pct(s.get('coverage'))} coverage "
        f"(against the hidden truth); {r.minutes:.1f} min in all",
    ])
