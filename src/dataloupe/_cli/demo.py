"""``dataloupe demo``: the README's main job (the loop on a Fashion-MNIST scenario)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dataloupe._cli.common import ProjectOpt, project_from


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
        name: Annotated[str, typer.Option(help="Loop name; tables are NAME-train / NAME-val.")] = "demo",
        project: ProjectOpt = None,
    ) -> None:
        """Run the loop on Fashion-MNIST with few, partly wrong labels; print what each revision bought."""
        from dataloupe.loop import summary_table
        from dataloupe.loop._demo import fashion_mnist_demo

        p = project_from(project)
        r = fashion_mnist_demo(p, fashion_dir=fashion_dir, per_class=per_class, flip=flip, pool=pool,
                               val_size=val_size, policy=policy, iterations=iterations, name=name,
                               log=typer.echo)
        typer.echo("\n" + summary_table(r.loop))
        s = r.score
        prec = "-" if s["precision"] is None else f"{100 * s['precision']:.1f}%"
        typer.echo(f"\nautomatic labels: {s['auto_labeled']} of {s['pool']} pool images "
                   f"({100 * s['coverage']:.1f}% coverage), {prec} correct against the hidden truth")
        cpu = sum(row["cpu_minutes"] for row in r.loop.iterations)
        wall = sum(row["minutes"] for row in r.loop.iterations)
        typer.echo(f"loop time: {wall:.1f} min wall, {cpu:.1f} CPU-min")
        last = r.loop.iterations[-1] if r.loop.iterations else None
        typer.echo(f"\nproject: {p.root}\nsummary: {r.loop.folder}/summary.txt, accuracy.png")
        if r.report:
            typer.echo(f"report:  {r.report}")
        typer.echo("look further:\n"
                   f"  dataloupe table log {name}-train --project {p.root}\n"
                   + (f"  dataloupe table diff {name}-train {last['revision']} {last['next_revision']}"
                      f" --project {p.root}\n" if last else "")
                   + f"  dataloupe ui --project {p.root}")
