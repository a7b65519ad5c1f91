"""``dataloupe analyze``, ``reduce``, ``report`` and ``runs export``: parse, then call the analysis API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dataloupe._cli.common import JsonOpt, ProjectOpt, print_json, project_from


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_cmd)
    app.command("reduce")(reduce_cmd)
    app.command("report")(report_cmd)
    _runs_group(app).command("export")(export_cmd)


def _runs_group(app: typer.Typer) -> typer.Typer:
    """The ``runs`` sub-app (the train stage creates it; created here when absent)."""
    for group in app.registered_groups:
        if group.name == "runs":
            return group.typer_instance
    runs_app = typer.Typer(help="Training runs in the project.", no_args_is_help=True)
    app.add_typer(runs_app, name="runs")
    return runs_app


def analyze_cmd(
    run: str,
    folds: Annotated[Optional[int], typer.Option(help="Cross-fit K folds for out-of-sample probabilities.")] = None,
    real_labels: Annotated[Optional[Path], typer.Option(
        help="ReaL-style JSON: one list of valid class indices per validation sample (in id order).")] = None,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find label issues, outliers, duplicates, leakage, clusters, pseudo-labels and the error taxonomy."""
    from dataloupe.analysis import analyze_run

    out, _ = analyze_run(project_from(project), run, folds=folds, real_labels=real_labels)
    if as_json:
        print_json(out)
        return
    tax = out["taxonomy"]
    pl = out["pseudo_labels"]
    typer.echo(f"run {run}: {len(out['label_issues'])} label issues, {len(out['outliers'])} outliers, "
               f"{len(out['near_duplicates'])} near-duplicate pairs, {len(out['leakage'])} leaked val samples, "
               f"{sum(c['cluster'] >= 0 for c in out['clusters'])} clusters, {len(pl['items'])} pseudo-labels "
               f"(of {pl['undefined']} undefined)")
    if "categories" in tax:
        cats = ", ".join(f"{k} {v['count']}" for k, v in tax["categories"].items())
        typer.echo(f"val top-1 {tax['top1']:.3f}, without suspected label errors {tax['top1_without_label_issues']:.3f}"
                   + (f", ReaL {tax['real_top1']:.3f}" if tax.get("real_top1") is not None else "")
                   + f"; errors: {cats}")
    for r in out["label_issues"][:10]:
        typer.echo(f"  issue {out['tables'][r['table']]}#{r['id']}: {r['label']} -> {r['suggested_label']} (score {r['score']:.3f})")
    typer.echo(f"written: runs/{run}/analysis.json")


def reduce_cmd(
    run: str,
    method: Annotated[str, typer.Option(help="pacmap or umap.")] = "pacmap",
    dims: Annotated[int, typer.Option(help="2 or 3.")] = 2,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Map the run's embeddings to 2-D/3-D (fit on train, val placed on the same map)."""
    from dataloupe.analysis import reduce_run

    out = reduce_run(project_from(project), run, method=method, dims=dims)
    if as_json:
        print_json(out)
    else:
        typer.echo(f"run {run}: {method} {dims}-D map fitted on {out['fitted_on']}; rows {out['rows']}")


def export_cmd(
    run: str,
    csv: Annotated[Path, typer.Option("--csv", help="CSV file to write.")],
    table: Annotated[Optional[str], typer.Option(help="TABLE[@REV] (default: the run's train and val tables).")] = None,
    project: ProjectOpt = None,
) -> None:
    """Export per-sample metrics: id, split, label, predicted, confidence, loss, prob_<class>..."""
    from dataloupe.analysis import export_run_csv

    n = export_run_csv(project_from(project), run, csv, table=table)
    typer.echo(f"wrote {n} rows to {csv}")


def report_cmd(
    run: str,
    out: Annotated[Optional[Path], typer.Option(help="HTML file (default runs/<run>/report.html).")] = None,
    project: ProjectOpt = None,
) -> None:
    """Write one self-contained HTML report of the run (curves, confusion, map, galleries)."""
    from dataloupe.report import write_report

    path = write_report(project_from(project), run, out=out)
    typer.echo(f"wrote {path}")
