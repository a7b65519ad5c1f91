"""A kNN memory's metrics from its base's kept views, against a second forward pass, in one run.

``dataloupe knn`` (and the loop's ``knn`` step) writes the memory run's per-sample metrics. The
memory's network is its base's, so the base's collect keeps each row's unmerged views (logits and
embedding of the image and of its mirror: ``metrics/<table>.views.npz``) and the vote is put on
those; before, the memory run collected again: one more forward pass over every training and
validation row. This builds the same memory twice on a finished run whose collect kept its views
(any run trained with ``collect: true`` in one process, e.g. a loop iteration's), once each way,
and prints seconds, their ratio, the validation top-1 and how far the two runs' metrics differ.

    PYTHONPATH=src python bench/memory_views.py --project P --run hk-default-w1-it4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def compare(project, base: str, *, k: int, temperature: float, pool_fraction: float, weight: float) -> list[dict]:
    """Build the memory over ``base`` from its views and by collecting; one row per way."""
    from unittest import mock

    from dataloupe.analysis._runio import load_metrics
    from dataloupe.runs import read_run
    from dataloupe.train import _collect, memory_run

    info = read_run(project, base)
    refs = [f"{info['train_table']}@{info['train_revision']}", f"{info['val_table']}@{info['val_revision']}"]
    if any(_collect.kept_views(project, base, ref) is None for ref in refs):
        raise SystemExit(f"run {base!r} has no current kept views of {refs}: collect it in one process first "
                         f"(dataloupe collect {base})")
    settings = dict(k=k, temperature=temperature, pool_fraction=pool_fraction, weight=weight, force=True)
    rows = []
    for way in ("views", "collect"):
        run = f"{base}-mv-{way}"
        t0 = time.perf_counter()
        if way == "views":
            out = memory_run(project, run, base, **settings)
        else:
            with mock.patch.object(_collect, "kept_views", lambda *a: None):  # as before: a forward pass
                out = memory_run(project, run, base, **settings)
        rows.append({"way": way, "run": run, "seconds": time.perf_counter() - t0, "val_top1": out["best_val_top1"]})
    tables = {}
    for row in rows:
        tables[row["way"]] = {t: load_metrics(project, row["run"], t, columns=["id", "predicted", "probs", "embedding"])
                              .sort_by("id") for t in (info["train_table"], info["val_table"])}
    for row in rows:
        diff, same = 0.0, 0
        for t, mine in tables[row["way"]].items():
            other = tables["collect"][t]
            for col in ("probs", "embedding"):
                a, b = (np.asarray(x[col].to_pylist(), np.float64) for x in (mine, other))
                diff = max(diff, float(np.abs(a - b).max()))
            same += int(np.sum(np.array(mine["predicted"].to_pylist()) == np.array(other["predicted"].to_pylist())))
        row["max_abs_diff"], row["same_prediction"] = diff, same
        row["rows"] = sum(len(x) for x in tables["collect"].values())
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--run", required=True, help="A completed classifier run whose collect kept its views.")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--pool-fraction", type=float, default=0.0)
    ap.add_argument("--weight", type=float, default=10.0, help="Default: the `default` policy's memory.")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from dataloupe.project import Project

    rows = compare(Project.open(args.project), args.run, k=args.k, temperature=args.temperature,
                   pool_fraction=args.pool_fraction, weight=args.weight)
    ref = next(r for r in rows if r["way"] == "collect")
    print(f"{'metrics from':<14}{'seconds':>9}{'ratio':>8}{'val top-1':>11}{'same prediction':>18}{'max |diff|':>12}")
    for r in rows:
        print(f"{r['way']:<14}{r['seconds']:>9.1f}{r['seconds'] / ref['seconds']:>8.2f}{100 * r['val_top1']:>10.2f}%"
              f"{r['same_prediction']:>11}/{r['rows']:<6}{r['max_abs_diff']:>12.1e}")


if __name__ == "__main__":
    main()
