"""Run-level entry points the CLI and the dashboard call: analyze, reduce, export.

Each reads the run's metrics (``_runio``), calls the pure functions, and writes results
into the run folder only after everything succeeded.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa

from dataloupe._fileio import atomic_path
from dataloupe.analysis._detectors import _issues, analyze
from dataloupe.analysis._maps import reduce
from dataloupe.analysis._runio import (
    check_revision,
    load_inputs,
    load_metrics,
    require_classifier,
    write_columns,
    write_json,
)
from dataloupe.runs import read_run, run_tables
from dataloupe.analysis._taxonomy import load_real_labels
from dataloupe.project import DataloupeError, Project


def analyze_run(project: Project, run: str, *, folds: int | None = None, real_labels: str | Path | None = None,
                k: int = 10) -> tuple[dict, "pa.Table"]:
    """Findings of ``run``; writes ``runs/<run>/analysis.json`` and the ``cluster`` column.

    Records name their table by run role (``"table": "train"`` / ``"val"``; leakage pairs
    carry ``train_id`` / ``val_id``): ids are unique only within one table.

    Returns:
        `(findings, metrics)`: the JSON object written, and the run's metrics on its
        training table (with the new ``cluster`` column) as an Arrow table.

    Example:
        >>> findings, metrics = analyze_run(Project.open(), "a", folds=5)  # doctest: +SKIP
    """
    if folds is not None and folds < 2:
        raise DataloupeError(f"--folds must be at least 2, got {folds}")
    inputs, info = load_inputs(project, run, k=k)
    if real_labels is not None:
        if inputs.val is None:
            raise DataloupeError(f"--real-labels needs a validation table; run {run!r} has none")
        inputs.real_labels = load_real_labels(real_labels, num_samples=len(inputs.val),
                                              num_classes=len(inputs.classes))
    findings, columns = analyze(inputs, folds=folds)
    tables = run_tables(info)
    out = dict(**findings, run=run, classes=inputs.classes, tables=tables)  # findings first: `--json | head`
    write_json(project.runs_dir / run / "analysis.json", out)
    for role, cols in columns.items():
        write_columns(project, run, tables[role], getattr(inputs, role).ids, cols)
    return out, load_metrics(project, run, tables["train"])


def label_suspicion(project: Project, run: str, *, k: int = 10) -> dict:
    """How much the evidence doubts each given label of ``run``'s training table, most doubted first.

    The score is the label-issue ranking of ``analyze`` (cross-fitted probabilities on the
    embeddings, neighbour votes, AUM: ``find_label_issues``) for EVERY labeled row, not only
    the ones its estimate flags: a person re-checking labels wants the most doubtful first
    even when the estimate of how many are wrong errs low (with 200 labels it can say 0 while
    re-checking its top 40 corrected 12-18 of 20 flipped ones on the Fashion-MNIST demo: bench/RESULTS.md).

    Returns:
        ``{"table", "ids", "scores", "suggested", "flagged", "probabilities"}``: ``ids`` (int64),
        ``scores`` (float, in (0, 1], higher = more doubtful) and ``flagged`` (bool, what
        ``analyze`` reports) are arrays sorted by score, descending; ``suggested`` the class
        names the evidence prefers instead; ``probabilities`` where the probabilities came
        from (e.g. ``"crossfit-5"``).
    """
    inputs, info = load_inputs(project, run, hashes=False, k=k, train_only=True)
    s = inputs.train
    lab, r, source = _issues(inputs, s)
    rows = np.flatnonzero(lab)
    order = np.argsort(-r.scores, kind="stable")
    return {"table": run_tables(info)["train"], "ids": s.ids[rows][order].astype(np.int64),
            "scores": np.asarray(r.scores, np.float64)[order], "flagged": np.asarray(r.mask, bool)[order],
            "suggested": [inputs.classes[int(c)] for c in np.asarray(r.suggested)[order]], "probabilities": source}


def reduce_run(project: Project, run: str, *, method: str = "pacmap", dims: int = 2) -> dict:
    """Fit a map on the run's train embeddings, place val on it, store ``map_x/y(/z)``.

    A pretrain run (embeddings only) is fitted on its first table; its other tables, and
    any other table it has collected metrics for (``collect RUN --table T``), are placed.
    """
    info = read_run(project, run)
    tables = run_tables(info)
    if info.get("kind") == "pretrain":
        collected = sorted(p.name.removesuffix(".lance") for p in (project.runs_dir / run / "metrics").glob("*.lance"))
        tables.update({name: name for name in collected if name not in tables})
    fit_role = "train" if "train" in tables else next(iter(tables), None)
    if fit_role is None:
        raise DataloupeError(f"run {run!r} names no tables to map")
    embs = {}
    for role, name in tables.items():
        m = load_metrics(project, run, name, columns=["id", "embedding"])
        arr = m.column("embedding").combine_chunks()
        embs[role] = (m.column("id").to_numpy(), arr.values.to_numpy().reshape(len(arr), arr.type.list_size))
    fit_ids, fit = embs[fit_role]
    others = [r for r in embs if r != fit_role]
    coords, placed = reduce(fit, method=method, dims=dims, apply=[embs[r][1] for r in others],
                            seed=int(info.get("seed") or 0))
    names = ["map_x", "map_y", "map_z"][:dims]
    drop = ("map_z",) if dims == 2 else ()
    for role, (ids, xy) in [(fit_role, (fit_ids, coords))] + [(r, (embs[r][0], c)) for r, c in zip(others, placed)]:
        write_columns(project, run, tables[role], ids, {n: xy[:, i].astype(np.float32) for i, n in enumerate(names)},
                      drop=drop)
    return dict(run=run, method=method, dims=dims, fitted_on=tables[fit_role],
                rows={tables[r]: int(len(embs[r][0])) for r in embs})


def export_run_csv(project: Project, run: str, path: str | Path, *, table: str | None = None) -> int:
    """One CSV row per sample: id, split, label, predicted, confidence, loss, prob_<class>...

    Args:
        table: ``NAME[@REV]``; default all the run's tables (train, then val).

    Returns:
        the number of rows written.
    """
    from dataloupe.tables import TableRef

    info = read_run(project, run)
    require_classifier(info, run, "the CSV export (probabilities, predictions)")
    classes = list(info.get("classes") or [])
    if table is None:
        refs = [TableRef(n) for n in run_tables(info).values()]
    else:
        refs = [TableRef.parse(table)]
        if refs[0].name not in run_tables(info).values() and not (project.runs_dir / run / "metrics" / f"{refs[0].name}.lance").exists():
            raise DataloupeError(f"run {run!r} knows no table {refs[0].name!r} (has: {', '.join(run_tables(info).values())})")
    parts = []
    for ref in refs:
        m = load_metrics(project, run, ref.name,
                         columns=["id", "table_revision", "split", "label", "predicted", "confidence", "loss", "probs"])
        if ref.revision is not None:  # a tag or number the table must know, then the metrics must match
            from dataloupe.tables import open_table

            check_revision(m, run, ref.name, open_table(project, ref.name, ref.revision).revision)
        parts.append(m)
    path = Path(path)
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "split", "label", "predicted", "confidence", "loss"] + [f"prob_{c}" for c in classes])
        for m in parts:
            arr = m.column("probs").combine_chunks()
            probs = arr.values.to_numpy().reshape(len(arr), arr.type.list_size)
            cols = [m.column(c).to_pylist() for c in ("id", "split", "label", "predicted", "confidence", "loss")]
            for i, row in enumerate(zip(*cols)):
                w.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in row]
                           + [f"{p:.6g}" for p in probs[i]])
                n += 1
    return n
