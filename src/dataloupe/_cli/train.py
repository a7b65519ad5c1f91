"""``dataloupe train``, ``lr-find``, ``runs ls|show``, ``collect`` and ``ensemble``: parse, then call the train API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from dataloupe._cli.common import JsonOpt, ProjectOpt, print_json, project_from
from dataloupe.project import DataloupeError

runs_app = typer.Typer(help="Training runs in the project.", no_args_is_help=True)

OverridesArg = Annotated[Optional[list[str]], typer.Argument(help="Recipe overrides key=value (e.g. epochs=2 lr=0.01).",
                                                             show_default=False)]


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("lr-find")(lr_find_cmd)
    app.command("collect")(collect_cmd)
    app.command("ensemble")(ensemble_cmd)
    app.command("knn")(knn_cmd)
    app.add_typer(runs_app, name="runs")


def train_cmd(
    overrides: OverridesArg = None,
    train: Annotated[Optional[str], typer.Option("--train", help="Training table: TABLE or TABLE@REV.")] = None,
    val: Annotated[Optional[str], typer.Option("--val", help="Validation table: TABLE or TABLE@REV.")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="Recipe name or YAML file.")] = None,
    run: Annotated[Optional[str], typer.Option(
        "--run", "--run-name",
        help="Run name (default: <recipe>-<n>). Under torchrun use --run-name (torchrun takes --run for --run-path).",
    )] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue run --run from its last checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --resume: resume even if the tables changed. Without: start a failed or killed run over (its folder is replaced).")] = False,
    project: ProjectOpt = None,
) -> None:
    """Train a classifier on table revisions with a recipe (works under torchrun)."""
    from dataloupe import runs as _runs
    from dataloupe.train import load_recipe, train as train_fn

    p = project_from(project)
    if resume:
        if not run:
            raise DataloupeError("--resume needs --run NAME")
        info = _runs.read_run(p, run)
        if info.get("kind") == "pretrain":
            raise DataloupeError(f"run {run!r} is a pretrain run: resume it with"
                                 f" `dataloupe pretrain --run {run} --resume`")
        saved = _runs.run_dir(p, run) / "recipe.yaml"
        r = load_recipe(recipe or str(saved), overrides or [])
        train = train or info["train_table"]
        val = val or info["val_table"]
    else:
        if not (train and val and recipe):
            raise DataloupeError("train needs --train TABLE, --val TABLE and --recipe RECIPE")
        r = load_recipe(recipe, overrides or [])
    info = train_fn(p, train, val, r, run=run, resume=resume, force=force)
    if info and os.environ.get("RANK", "0") == "0":
        typer.echo(f"run {info['run']}: {info['status']}, best val top-1 {info.get('best_val_top1')}"
                   f" (epoch {info.get('best_epoch')})")


def lr_find_cmd(
    overrides: OverridesArg = None,
    train: Annotated[str, typer.Option("--train", help="Table: TABLE or TABLE@REV.")] = ...,
    recipe: Annotated[str, typer.Option("--recipe", help="Recipe name or YAML file.")] = ...,
    start_lr: Annotated[float, typer.Option(help="First learning rate.")] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="Last learning rate.")] = 10.0,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 100,
    plot: Annotated[Optional[Path], typer.Option(help="PNG path (default: <project>/lr-find/...).")] = None,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """LR range test: print the suggested learning rate and write the loss-vs-LR plot."""
    from dataloupe.train import load_recipe
    from dataloupe.train._lr_find import lr_find

    res = lr_find(project_from(project), train, load_recipe(recipe, overrides or []), start_lr=start_lr,
                  end_lr=end_lr, steps=steps, plot=plot)
    if as_json:
        print_json(res)
    else:
        typer.echo(f"suggested lr: {res['suggested_lr']:.3g}")
        typer.echo(f"plot: {res['plot']}")


def collect_cmd(
    run: str,
    table: Annotated[Optional[str], typer.Option(
        "--table", help="TABLE or TABLE@REV (default: the run's train and val).")] = None,
    project: ProjectOpt = None,
) -> None:
    """Write per-sample metrics (predictions, probabilities, embeddings, AUM) of a run."""
    from dataloupe.train._collect import collect

    for path in collect(project_from(project), run, table):  # under torchrun: every process collects its shard
        if os.environ.get("RANK", "0") == "0":
            typer.echo(f"wrote {path}")


def ensemble_cmd(
    members: Annotated[list[str], typer.Argument(help="Two or more completed runs of one model on the same tables.")],
    run: Annotated[str, typer.Option("--run", help="Name of the ensemble run to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run of that name.")] = False,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Average the logits of finished runs into one run (evaluated, collected, servable)."""
    from dataloupe.train import ensemble_runs

    info = ensemble_runs(project_from(project), run, list(members), force=force)
    if as_json:
        print_json(info)
        return
    typer.echo(f"run {run}: ensemble of {', '.join(info['members'])} ({info['model']}); "
               f"val top-1 {100 * info['best_val_top1']:.2f}%")


def knn_cmd(
    base: Annotated[str, typer.Argument(help="A completed classifier run (one model or an ensemble).")],
    run: Annotated[str, typer.Option("--run", help="Name of the run to write.")],
    k: Annotated[int, typer.Option("--k", help="Neighbours that vote.")] = 20,
    temperature: Annotated[float, typer.Option("--temperature", help="Vote weight exp(similarity / T).")] = 0.1,
    pool_fraction: Annotated[float, typer.Option(
        "--pool-fraction", help="Share of the undefined rows in the memory, the base's most confident first "
                                "(with its prediction); 0: labeled rows only.")] = 0.5,
    weight: Annotated[float, typer.Option("--weight", help="The vote's weight against the head's softmax (1: the "
                                                           "mean of the two).")] = 1.0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run of that name.")] = False,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a kNN memory of the training rows to a finished run (evaluated, collected, servable)."""
    from dataloupe.train import memory_run

    info = memory_run(project_from(project), run, base, k=k, temperature=temperature, pool_fraction=pool_fraction,
                      weight=weight, force=force)
    if as_json:
        print_json(info)
        return
    mem = info["memory"]
    typer.echo(f"run {run}: {base} with a memory of {mem['labeled']} labeled and {mem['pool']} pool rows "
               f"(k {k}, T {temperature}, weight {weight}); val top-1 {100 * info['best_val_top1']:.2f}%")


@runs_app.command("ls")
def runs_ls(project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """List runs."""
    from dataloupe.runs import list_runs

    rows = list_runs(project_from(project))
    if as_json:
        print_json(rows)
        return
    for r in rows:
        if r.get("kind") == "pretrain":
            knn = r["knn_top1"]
            tables = ", ".join(f"{t['table']}@{t['revision']}" for t in r.get("tables") or [])
            typer.echo(f"{r['run']:<24} {r['status']:<9} {r['recipe']:<32} {tables} epochs {r['epochs_done']}/"
                       f"{r['epochs']} kNN {f'{knn:.4f}' if isinstance(knn, (int, float)) else '-'}")
            continue
        best = r["best_val_top1"]
        best_s = f"{best:.4f}" if isinstance(best, (int, float)) else "-"
        made = (f"ensemble of {', '.join(r.get('members') or [])}" if r.get("kind") == "ensemble" else
                f"{r.get('base')} + kNN memory" if r.get("kind") == "memory" else
                f"epochs {r['epochs_done']}/{r['epochs']}")
        typer.echo(f"{r['run']:<24} {r['status']:<9} {r['recipe']:<32} {r['train_table']}@{r['train_revision']}"
                   f" -> {r['val_table']}@{r['val_revision']} {made} best {best_s}")


@runs_app.command("show")
def runs_show(run: str, project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Show one run: provenance, status, history, plots."""
    from dataloupe.runs import show_run

    info = show_run(project_from(project), run)
    if as_json:
        print_json(info)
        return
    keys = ("run", "status", "recipe", "train_table", "train_revision", "val_table", "val_revision", "epochs",
            "epochs_done", "best_val_top1", "best_epoch", "folder")
    if info.get("kind") == "pretrain":
        keys = ("run", "kind", "status", "method", "tables", "epochs", "epochs_done", "knn_top1_start", "knn_top1",
                "folder")
    elif info.get("kind") == "ensemble":  # no epochs of its own: what it averages instead
        keys = ("run", "kind", "status", "recipe", "members", "model", "train_table", "train_revision", "val_table",
                "val_revision", "best_val_top1", "folder")
    elif info.get("kind") == "memory":
        keys = ("run", "kind", "status", "recipe", "base", "memory", "model", "train_table", "train_revision",
                "val_table", "val_revision", "best_val_top1", "folder")
    for k in keys:
        v = info.get(k)
        if k == "tables" and isinstance(v, list):
            v = ", ".join(f"{t['table']}@{t['revision']}" for t in v)
        elif k == "members" and isinstance(v, list):
            v = ", ".join(v)
        typer.echo(f"{k}: {v}")
    for h in info["history"]:
        typer.echo("  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in h.items()))
