"""``dataloupe table ...``: import, inspect, edit, diff, revert and export tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from dataloupe import tables as T
from dataloupe._cli.common import JsonOpt, ProjectOpt, print_json, project_from
from dataloupe.project import DataloupeError, Project

table_app = typer.Typer(help="Versioned dataset tables.", no_args_is_help=True)
import_app = typer.Typer(help="Import images into a new table (or --append to one).",
                         no_args_is_help=True)
table_app.add_typer(import_app, name="import")

RevOpt = Annotated[Optional[str], typer.Option("--revision", "-r", help="Revision number or tag (default: latest).")]
MsgOpt = Annotated[str, typer.Option("--message", "-m", help="Revision message.")]


def register(app: typer.Typer) -> None:
    app.add_typer(table_app, name="table")


def _rev(rev: str | None) -> int | str | None:
    return int(rev) if rev is not None and rev.isdigit() else rev


def _open_ref(project: Project, name: str, revision: str | None) -> T.Table:
    """``NAME`` with ``--revision``, or ``NAME@REV`` (a number or a tag), as the README shows."""
    ref = T.TableRef.parse(name)
    if ref.revision is not None and revision is not None:
        raise DataloupeError(f"give the revision once: {name!r} already names one, and --revision {revision}")
    return T.open_table(project, ref.name, ref.revision if ref.revision is not None else _rev(revision))


def _classes(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _report(rep: T.ImportReport, as_json: bool) -> None:
    if as_json:
        print_json(rep.to_dict())
    else:
        s = rep.table.summary()
        typer.echo(f"{rep.table.name}: revision {rep.table.revision}, imported {rep.imported} rows "
                   f"({s['labeled']} labeled, {s['undefined']} undefined), classes "
                   f"{', '.join(rep.table.classes)}")
    for path, reason in rep.skipped:
        typer.echo(f"skipped {path}: {reason}", err=True)
    if rep.skipped:
        typer.echo(f"{len(rep.skipped)} file(s) skipped", err=True)


@import_app.command("imagefolder")
def import_imagefolder(
    folder: Path,
    table: Annotated[str, typer.Option("--table", help="New table name.")],
    unlabeled_dir: Annotated[Optional[str], typer.Option(help="Sub-folder whose images are undefined (unlabeled).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Ordered class list a,b,... (default: sorted folder names).")] = None,
    classes_from: Annotated[Optional[str], typer.Option(help="Take the class order of this table.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split of the rows (default: from the folder name).")] = None,
    append: Annotated[bool, typer.Option(help="Add the rows to an existing table as one revision.")] = False,
    strict: Annotated[bool, typer.Option(help="Any skipped file is an error: nothing is written.")] = False,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import FOLDER/<class>/... (sub-folders are classes)."""
    rep = T.import_imagefolder(project_from(project), folder, table=table,
                               unlabeled_dir=unlabeled_dir, classes=_classes(classes),
                               classes_from=classes_from, split=split, append=append, strict=strict)
    _report(rep, as_json)


@import_app.command("csv")
def import_csv(
    csv_file: Path,
    table: Annotated[str, typer.Option("--table", help="New table name.")],
    root: Annotated[Optional[str], typer.Option(help="Image root (default: the CSV's folder).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Ordered class list a,b,...")] = None,
    classes_from: Annotated[Optional[str], typer.Option(help="Take the class order of this table.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split for rows without a split column.")] = None,
    append: Annotated[bool, typer.Option(help="Add the rows to an existing table as one revision.")] = False,
    strict: Annotated[bool, typer.Option(help="Any skipped file is an error: nothing is written.")] = False,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import a CSV with columns path,label (+ weight, split, metadata); empty label = undefined."""
    rep = T.import_csv(project_from(project), csv_file, table=table, root=root,
                       classes=_classes(classes), classes_from=classes_from, split=split,
                       append=append, strict=strict)
    _report(rep, as_json)


@import_app.command("idx")
def import_idx(
    images: Path,
    labels: Path,
    table: Annotated[str, typer.Option("--table", help="New table name.")],
    classes: Annotated[Optional[str], typer.Option(help="Class names in label order a,b,...")] = None,
    split: Annotated[str, typer.Option(help="Split of the rows.")] = "train",
    limit: Annotated[Optional[int], typer.Option(help="Import only the first N images.")] = None,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import MNIST-format IDX files (e.g. Fashion-MNIST, .gz allowed)."""
    rep = T.import_idx(project_from(project), images, labels, table=table,
                       classes=_classes(classes), split=split, limit=limit)
    _report(rep, as_json)


@table_app.command("ls")
def ls(project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """List tables with their latest revision."""
    rows = T.list_tables(project_from(project))
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no tables yet: dataloupe table import imagefolder DIR --table NAME")
    for r in rows:
        typer.echo(f"{r['name']:<24} r{r['revision']:<4} {r['rows']:>9} rows  {r['message']}")


@table_app.command("show")
def show(name: str, revision: RevOpt = None, project: ProjectOpt = None,
         as_json: JsonOpt = False) -> None:
    """Counts of one revision (NAME, NAME@REV or NAME@TAG): rows, labeled, undefined, excluded, per class."""
    s = _open_ref(project_from(project), name, revision).summary()
    if as_json:
        print_json(s)
        return
    typer.echo(f"{s['table']} revision {s['revision']} of {s['latest_revision']}: {s['message']}")
    typer.echo(f"  rows {s['rows']}  labeled {s['labeled']}  undefined {s['undefined']}  "
               f"excluded {s['excluded']}")
    for c, n in s["classes"].items():
        typer.echo(f"  {c:<20} {n}")
    typer.echo(f"  image root {s['image_root']}")


@table_app.command("log")
def log(name: str, project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Revision history, oldest first."""
    entries = T.open_table(project_from(project), name).log()
    if as_json:
        print_json(entries)
        return
    for e in entries:
        ch = ", ".join(f"{k} {v}" for k, v in e["changes"].items()) or "no changes"
        tags = f" [{', '.join(e['tags'])}]" if e["tags"] else ""
        typer.echo(f"r{e['revision']:<4} {e['created']}  {e['message']}  ({ch}){tags}")


@table_app.command("diff")
def diff(name: str, a: str, b: str, limit: Annotated[int, typer.Option(help="Rows listed per kind.")] = 20,
         project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Per-sample label/weight changes and rows added/removed between revisions A and B."""
    d = T.diff_revisions(project_from(project), name, _rev(a), _rev(b))
    if as_json:
        print_json(d.to_dict())
        return
    typer.echo(f"{name}: r{d.a} -> r{d.b}: " + (", ".join(f"{k} {v}" for k, v in d.summary.items())
                                               or "no differences"))
    for r in d.changed.slice(0, limit).to_pylist():
        typer.echo(f"  ~ {r['id']:>8} {r['path']}: label {r['label_a']} -> {r['label_b']}, "
                   f"weight {r['weight_a']:g} -> {r['weight_b']:g}")
    for sign, t in (("+", d.added), ("-", d.removed)):
        for r in t.slice(0, limit).to_pylist():
            typer.echo(f"  {sign} {r['id']:>8} {r['path']} ({r['label']})")


def _read_ids(path: Path) -> np.ndarray:
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        return np.array([int(x) for x in lines if x and not x.startswith("#")], dtype=np.int64)
    except OSError as e:
        raise DataloupeError(f"cannot read ids file {path}: {e.strerror}") from None
    except (ValueError, OverflowError) as e:
        raise DataloupeError(f"ids file {path} must hold one integer id (0 .. 2^63-1) per line ({e})") from None


def run_metrics(project: Project, run: str, table: str):
    """The per-sample metrics a run collected on ``table`` (Arrow, without vector columns)."""
    import lance

    from dataloupe import runs

    runs.existing_run_dir(project, run)
    path = runs.metrics_path(project, run, table)
    if not path.exists():
        raise DataloupeError(f"run {run!r} has no metrics for table {table!r}: "
                             f"run `dataloupe collect {run} --table {table}`")
    ds = lance.dataset(path)
    cols = [f.name for f in ds.schema if not (f.name in ("probs", "embedding"))]
    return ds.to_table(columns=cols)


def analysis_ids(project: Project, spec: str, table: str | None = None) -> np.ndarray:
    """``RUN:KIND`` -> the sample ids a finding of ``dataloupe analyze`` names about ``table``
    (rows carry the run role, train/val, or a table name; ids are unique per table)."""
    from dataloupe import runs
    from dataloupe.analysis import finding_rows, list_detectors

    run, sep, kind = spec.partition(":")
    if not sep:
        raise DataloupeError(f"--ids-from-analysis wants RUN:KIND (e.g. a:label_issues), got {spec!r}")
    folder = runs.existing_run_dir(project, run)
    found = runs.read_analysis_at(folder)
    if not found:
        raise DataloupeError(f"run {run!r} has no analysis: run `dataloupe analyze {run}`")
    kinds = list_detectors(per_sample=True)
    if kind not in found or kind not in kinds:
        raise DataloupeError(f"analysis of {run!r} has no per-sample finding {kind!r}"
                             f" (has: {', '.join(k for k in kinds if k in found)})")
    roles = None if table is None else runs.table_roles(runs.read_run_at(folder), table)
    return np.array([r.id for r in finding_rows(found, kind, roles)], np.int64)


@table_app.command("edit")
def edit(
    name: str,
    message: MsgOpt,
    where: Annotated[Optional[str], typer.Option(help="SQL-like predicate, e.g. \"label = 'muffin'\".")] = None,
    ids_file: Annotated[Optional[Path], typer.Option(help="File with one sample id per line.")] = None,
    ids_from_analysis: Annotated[Optional[str], typer.Option(help="RUN:KIND, e.g. a:label_issues.")] = None,
    run: Annotated[Optional[str], typer.Option(help="Join this run's per-sample metrics (predicate may use them).")] = None,
    set_label: Annotated[Optional[str], typer.Option(help="Set the label to CLASS.")] = None,
    set_label_from: Annotated[Optional[str], typer.Option(help="Set the label from a metrics column (e.g. predicted).")] = None,
    undefine: Annotated[bool, typer.Option(help="Mark the label undefined.")] = False,
    exclude: Annotated[bool, typer.Option(help="Set weight 0 (kept, not trained on).")] = False,
    include: Annotated[bool, typer.Option(help="Set weight 1.")] = False,
    set_weight: Annotated[Optional[float], typer.Option(help="Set the sampling weight.")] = None,
    delete: Annotated[bool, typer.Option(help="Delete the rows (ids are never reused).")] = False,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Edit the selected rows of the latest revision; makes exactly one new revision."""
    chosen = [a for a, on in (("set_label", set_label is not None or set_label_from is not None),
                              ("undefine", undefine), ("exclude", exclude), ("include", include),
                              ("set_weight", set_weight is not None), ("delete", delete)) if on]
    if len(chosen) != 1:
        raise DataloupeError("give exactly one of --set-label, --set-label-from, --undefine, "
                             "--exclude, --include, --set-weight, --delete")
    p = project_from(project)
    ids = None
    if ids_file is not None:
        ids = _read_ids(ids_file)
    if ids_from_analysis is not None:
        more = analysis_ids(p, ids_from_analysis, name)
        ids = more if ids is None else np.intersect1d(ids, more)
    extra = run_metrics(p, run, name) if run else None
    res = T.edit_table(p, name, action=chosen[0], message=message, where=where, ids=ids,
                       label=set_label, weight=set_weight, extra=extra,
                       set_label_from=set_label_from)
    if as_json:
        print_json({"table": name, "revision": res.table.revision, "committed": res.committed,
                    "matched": res.matched, "changed": res.changed, "changes": res.changes})
    elif res.committed:
        ch = ", ".join(f"{k} {v}" for k, v in res.changes.items())
        typer.echo(f"{name}: revision {res.table.revision} ({ch}; {res.matched} rows matched)")
    else:
        typer.echo(f"{name}: nothing changed ({res.matched} rows matched); no new revision", err=True)


@table_app.command("revert")
def revert(name: str, revision: str,
           message: Annotated[Optional[str], typer.Option("--message", "-m")] = None,
           project: ProjectOpt = None) -> None:
    """Make a new revision equal to REVISION (history is never rewritten)."""
    t = T.revert_table(project_from(project), name, _rev(revision), message=message)
    typer.echo(f"{name}: revision {t.revision} = revision {t.entry.get('reverted_to')}")


@table_app.command("tag")
def tag(name: str, tag: str, revision: Annotated[Optional[int], typer.Option("--revision", "-r")] = None,
        project: ProjectOpt = None) -> None:
    """Name a revision with a tag (usable wherever a revision is: NAME@TAG, --revision TAG)."""
    t = T.tag_table(project_from(project), name, tag, revision)
    typer.echo(f"{name}: tag {tag!r} -> revision {t.revision}")


@table_app.command("set-root")
def set_root(name: str, root: Path, project: ProjectOpt = None) -> None:
    """Re-point the table's image root (e.g. after moving the project to another machine)."""
    t = T.set_root(project_from(project), name, root)
    typer.echo(f"{name}: image root {t.image_root}")


@table_app.command("set-classes")
def set_classes(
    name: str, message: MsgOpt,
    classes: Annotated[Optional[str], typer.Option(help="Ordered class list a,b,...")] = None,
    classes_from: Annotated[Optional[str], typer.Option(help="Take the class order of this table.")] = None,
    project: ProjectOpt = None,
) -> None:
    """Set the ordered class list (a new revision); validation must match training's order."""
    p = project_from(project)
    cls = T.open_table(p, classes_from).classes if classes_from else _classes(classes)
    if not cls:
        raise DataloupeError("give --classes a,b,... or --classes-from TABLE")
    t = T.set_classes(p, name, cls, message=message)
    typer.echo(f"{name}: revision {t.revision}, classes {', '.join(t.classes)}")


@table_app.command("export")
def export(name: str, csv_file: Annotated[Path, typer.Option("--csv", help="Output CSV file.")],
           revision: RevOpt = None, project: ProjectOpt = None) -> None:
    """Write id,path,label,weight,split (+ metadata) of a revision (NAME or NAME@REV) to CSV."""
    t = _open_ref(project_from(project), name, revision)
    n = T.export_csv(t, csv_file)
    typer.echo(f"wrote {n} rows of {t.name} r{t.revision} to {csv_file}")
