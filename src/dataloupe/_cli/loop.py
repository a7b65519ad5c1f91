"""``dataloupe loop``: the automated train -> analyse -> fix -> retrain loop."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dataloupe._cli.common import JsonOpt, ProjectOpt, print_json, project_from


def register(app: typer.Typer) -> None:
    app.command("review")(review_cmd)

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


def review_cmd(
    table: Annotated[str, typer.Option("--table", help="Table whose review queue is answered (its latest revision).")],
    run: Annotated[str, typer.Option("--run", help="Run whose model orders the queue (its metrics on the table).")],
    oracle: Annotated[Optional[Path], typer.Option("--oracle", help="CSV path,label (paths relative to the table's root) "
                                                   "answering for a person; without it the queue is printed.")] = None,
    budget: Annotated[int, typer.Option("--budget", help="How many rows of the queue to answer (or print).")] = 50,
    strategy: Annotated[str, typer.Option("--strategy", help="margin, entropy, density, cluster-margin, typiclust, "
                                          "typiclust-margin or random.")] = "margin",
    seed: Annotated[int, typer.Option(help="Seed of the random strategy.")] = 0,
    embeddings: Annotated[Optional[str], typer.Option(
        "--embeddings", help="Run whose embeddings of the table the density/cluster/typiclust strategies read "
                             "(e.g. a `dataloupe pretrain` run, collected on the table); default: --run's.")] = None,
    recheck: Annotated[int, typer.Option(
        "--recheck", help="Open the queue with this many given labels, the ones the evidence doubts most "
                          "(label-issue ranking of the rows --run trained on); they count in --budget.")] = 0,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer the first N rows of the review queue from an oracle file, as one revision."""
    from dataloupe.loop import answer_from_oracle, review_queue

    p = project_from(project)
    if oracle is None:
        q = review_queue(p, table, run, strategy=strategy, seed=seed, limit=budget, embeddings=embeddings,
                         recheck=min(recheck, budget))
        if as_json:
            print_json(q)
            return
        typer.echo(f"review queue of {table}@{q['revision']} under run {run} ({strategy}): {q['total']} rows; "
                   + ", ".join(f"{k} {v}" for k, v in q["counts"].items()))
        for it in q["items"]:
            typer.echo(f"  #{it['id']} {it['path']}: label {it['label'] or '(undefined)'}, predicted {it['predicted']} "
                       f"({(it['confidence'] or 0):.2f}), score {it['score']:.3f} [{', '.join(it['reasons'])}]"
                       + (f", suggested {it['suggested']}" if it.get("suggested") else ""))
        return
    res = answer_from_oracle(p, table, run, oracle, budget=budget, strategy=strategy, seed=seed,
                             embeddings=embeddings, recheck=recheck)
    if as_json:
        print_json({k: res[k] for k in ("revision", "asked", "answered", "changed", "strategy")})
        return
    skipped = res["skipped_missing"] + res["skipped_unknown_class"]
    typer.echo(f"{table}: revision {res['revision']} — {res['answered']} of {res['asked']} asked rows answered "
               f"({strategy}), {res['changed']} changed"
               + (f"; skipped {res['skipped_missing']} not in {oracle.name}, {res['skipped_unknown_class']} with an "
                  f"unknown class" if skipped else ""))
    typer.echo(f"inspect: dataloupe table diff {table} {res['previous_revision']} {res['revision']}")
