"""Where a finished demo's missing points are: per-class accuracy and automatic labels at more coverage.

For every loop in a project made by ``dataloupe demo`` (or ``bench/demo_seeds.py``), read its last
iteration's model and print, against the hidden truth (the ``truth_id`` column of the demo's
training table points into the imported Fashion-MNIST table):

1. val top-1 per class of the loop's last model next to the oracle's (the same scenario's
   ``<loop>-oracle`` run), to see which classes the semi-supervised model has not learnt;
2. the precision of automatic labels if the loop labeled 50-90% of the pool instead of its
   ``max_fraction``, for the shipped ranking (rows where the network and label propagation agree,
   ranked by the propagated mass: ``auto_label(agreement_from=propagation)``), for the network's
   confidence alone and for their product. It reuses the rule's own :func:`propagated_labels`.

Reads only: nothing is trained or written.

    PYTHONPATH=src python bench/demo_breakdown.py --project P [--loops demo demo-s5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dataloupe.analysis._runio import load_metrics  # noqa: E402
from dataloupe.loop import RuleContext  # noqa: E402
from dataloupe.loop._rules import propagated_labels  # noqa: E402
from dataloupe.project import Project  # noqa: E402
from dataloupe.tables import open_table  # noqa: E402

COVERAGES = (0.5, 0.6, 0.7, 0.8, 0.9)


def precision_at(right: np.ndarray, score: np.ndarray, eligible: np.ndarray) -> list[float]:
    """Share of right labels among the best-``score`` ``c`` of the pool, eligible rows first."""
    order = np.argsort(-np.where(eligible, score, -np.inf), kind="stable")
    return [float(right[order[:int(c * len(right))]].mean()) for c in COVERAGES]


def breakdown(project: Project, loop: str, truth_of: dict) -> tuple[dict, dict]:
    state = json.loads((project.root / "loops" / loop / "state.json").read_text())
    last = state["iterations"][-1]
    train, val, run = state["train"], state["val"], last["run"]
    # per class, val top-1 of the loop's last model and of the oracle
    vt = open_table(project, val).to_arrow(columns=["id", "label"])
    val_truth = dict(zip(vt["id"].to_pylist(), vt["label"].to_pylist()))
    per_class = {}
    for name in (run, f"{loop}-oracle"):
        m = load_metrics(project, name, val, columns=["id", "predicted"])
        t = np.array([val_truth[i] for i in m["id"].to_pylist()], dtype=object)
        p = np.array(m["predicted"].to_pylist(), dtype=object)
        per_class[name] = {c: float((p[t == c] == c).mean()) for c in sorted(set(t))}
    # automatic labels on the pool the last model saw (the revision it trained on)
    table = open_table(project, train, last["revision"])
    rows = table.to_arrow()
    ctx = RuleContext(table.classes, rows, load_metrics(project, run, train), {}, iteration=last["iteration"])
    labels, pred = ctx.labels(), ctx.column("predicted")
    conf = ctx.column("confidence").astype(float)
    truth = np.array([truth_of[i] for i in rows["truth_id"].to_pylist()], dtype=object)
    pool = np.flatnonzero(labels == None)  # noqa: E711
    prop, mass = propagated_labels(ctx)
    right = pred[pool] == truth[pool]
    agree = prop[pool] == pred[pool]
    every = np.ones(len(pool), bool)
    curves = {"pool top-1": float(right.mean()),
              "shipped": precision_at(right, np.nan_to_num(mass[pool]), agree),
              "confidence": precision_at(right, conf[pool], every),
              "product": precision_at(right, conf[pool] * np.nan_to_num(mass[pool]), agree)}
    return {"run": run, "oracle": f"{loop}-oracle", "per_class": per_class}, curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--loops", nargs="*", help="loop names (default: every loop of the project)")
    ap.add_argument("--source", default="fmnist-train", help="the imported table the truth_id column points into")
    args = ap.parse_args()
    project = Project(args.project)
    loops = args.loops or sorted(p.name for p in (args.project / "loops").iterdir() if (p / "state.json").is_file())
    src = open_table(project, args.source).to_arrow(columns=["id", "label"])
    truth_of = dict(zip(src["id"].to_pylist(), src["label"].to_pylist()))
    pct = lambda xs: " / ".join(f"{100 * x:.1f}" for x in xs)  # noqa: E731
    print(f"automatic labels: precision at {pct(COVERAGES)}% of the pool")
    print(f"{'loop':<10} {'pool top-1':>10}  {'shipped ranking':<30} {'network confidence':<30} {'product':<30}")
    classes = {}
    for loop in loops:
        cls, cur = breakdown(project, loop, truth_of)
        classes[loop] = cls
        print(f"{loop:<10} {100 * cur['pool top-1']:9.1f}%  {pct(cur['shipped']):<30} "
              f"{pct(cur['confidence']):<30} {pct(cur['product']):<30}")
    print("\nval top-1 per class, loop's last model / oracle")
    for loop, cls in classes.items():
        loop_acc, oracle_acc = cls["per_class"][cls["run"]], cls["per_class"][cls["oracle"]]
        print(f"{loop}: " + ", ".join(f"{c} {100 * loop_acc[c]:.1f} / {100 * oracle_acc[c]:.1f}" for c in loop_acc))


if __name__ == "__main__":
    main()
