"""The third iteration of a `default` loop, with and without the propagation-certainty row weights.

`relabel_propagated weigh: true` sets each automatic label's row weight to the propagation's
certainty. A training seed moves the third network by about a point, so the weights are only
judged paired: for each training seed this trains iteration 3 twice on the loop's own revisions,
once with every row weight 1 (the revision iteration 3 trained on, its labels already
propagated) and once with the weights the rule computes over iteration 2's embedding (a new
revision: the same labels, only the rule's `set_weight` edits), both with the policy's keys and
the same seed, then adds the loop's kNN vote to each. It prints the network's and the vote's
test top-1 per seed, the means and the paired differences.

The project is one where the loop ran without weights (or with them: the rule is then re-applied
on the unweighted revision), e.g. `bench/hackathon.py --only default --project P` leaves loop
`hk-default` on table `cm-train-default`:

    PYTHONPATH=src python bench/weigh_pair.py --project P --loop hk-default --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def run_cli(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "dataloupe", *args], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    if out.returncode != 0:
        sys.exit(f"dataloupe {' '.join(args[:2])} failed:\n{out.stderr[-3000:]}")


def weighted_revision(project, state: dict, policy) -> tuple[int, int]:
    """``(unweighted, weighted)`` revisions of the loop's table for iteration 3: the revision it
    trained on with every automatic row at weight 1, and that revision plus the rule's weights."""
    import numpy as np

    from dataloupe.analysis._runio import load_metrics
    from dataloupe.loop._rules import RuleContext, get_rule
    from dataloupe.tables import EditOp, open_table
    from dataloupe.tables._edit import apply_edits, revert_table

    train, it2 = state["train"], state["iterations"][1]
    # edits apply to the table's latest revision: start from a copy of the one iteration 3 trained on
    rows = revert_table(project, train, it2["next_revision"],
                        message=f"weigh_pair: revision {it2['next_revision']}, iteration 3's").to_arrow()
    origin = open_table(project, train, state["start_revision"]).to_arrow(columns=["id", "label"])
    origin_labels = dict(zip(origin["id"].to_pylist(), origin["label"].to_pylist()))
    auto = np.array([origin_labels.get(int(i)) is None for i in rows["id"].to_pylist()])
    w = rows["weight"].to_numpy()
    if np.any(auto & (w > 0) & (w < 1)):  # the loop weighed already: put its automatic rows back at 1
        reset = EditOp("set_weight", ids=rows["id"].to_numpy()[auto & (w > 0) & (w < 1)], weight=1.0,
                       name="every automatic row at weight 1")
        rows = apply_edits(project, train, [reset], message="weigh_pair: unweighted").table.to_arrow()
    unweighted = open_table(project, train).revision
    params = {k: v for k, v in next(r.params for r in policy.rules if r.rule == "relabel_propagated").items()
              if k != "weigh"}
    metrics = load_metrics(project, it2["run"], train, columns=["id", "predicted", "confidence", "embedding"])
    ctx = RuleContext(open_table(project, train).classes, rows, metrics, {}, origin_labels=origin_labels, iteration=2)
    weigh_ops = get_rule("relabel_propagated")(ctx, **params, weigh=True).ops
    if any(op.action == "set_label" for op in weigh_ops):
        sys.exit(f"revision {unweighted}'s labels are not the propagation's over {it2['run']}: not the loop's revision")
    if not weigh_ops:
        sys.exit("the rule gives no weight below 1: nothing to compare")
    res = apply_edits(project, train, weigh_ops, message="weigh_pair: weights by propagation certainty")
    return unweighted, res.table.revision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--loop", default="hk-default")
    ap.add_argument("--policy", default=None,
                    help="The loop's policy (name or .yaml); default the name its state records.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="Extra recipe keys for both trainings (a quick check: epochs=1 epoch_samples=64).")
    args = ap.parse_args()

    from dataloupe.loop import load_policy
    from dataloupe.loop._loop import iteration_overrides
    from dataloupe.project import Project

    project = Project.open(args.project)
    state = json.loads((args.project / "loops" / args.loop / "state.json").read_text())
    if len(state["iterations"]) < 2:
        sys.exit(f"loop {args.loop!r} has {len(state['iterations'])} iteration(s); iteration 2's embedding is needed")
    policy = load_policy(args.policy or state["policy"])
    unweighted, weighted = weighted_revision(project, state, policy)
    keys = [f"{k}={json.dumps(v) if isinstance(v, (list, bool)) else v}"
            for k, v in iteration_overrides(policy, args.loop, 3).items()
            if k != "seed"]
    keys += args.set
    knn = policy.knn or {"k": 20, "temperature": 0.1, "pool_fraction": 0.0, "weight": 10.0}
    rows = []
    for seed in args.seeds:
        row = {"seed": seed}
        for tag, rev in (("plain", unweighted), ("weighted", weighted)):
            run = f"{args.loop}-it3-{tag}-s{seed}"
            run_cli("train", "--project", str(args.project), "--train", f"{state['train']}@{rev}", "--val",
                    state["val"], "--recipe", policy.recipe, *keys, f"seed={seed}", "--run", run, "--force")
            run_cli("knn", run, "--project", str(args.project), "--run", f"{run}-knn", "--k", str(knn["k"]),
                    "--temperature", str(knn["temperature"]), "--pool-fraction", str(knn["pool_fraction"]),
                    "--weight", str(knn["weight"]), "--force")
            for suffix, col in (("", "net"), ("-knn", "vote")):
                info = json.loads((args.project / "runs" / f"{run}{suffix}" / "run.json").read_text())
                row[f"{col}_{tag}"] = info["best_val_top1"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\niteration 3 of {args.loop}: revision {unweighted} (weight 1) vs {weighted} (certainty weights)")
    print(f"{'seed':>5} {'network w=1':>12} {'weighted':>9} {'vote w=1':>9} {'weighted':>9}")
    for r in rows:
        print(f"{r['seed']:>5} {r['net_plain']:>12.2%} {r['net_weighted']:>9.2%} {r['vote_plain']:>9.2%} "
              f"{r['vote_weighted']:>9.2%}")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "seed"}
    print(f"{'mean':>5} {mean['net_plain']:>12.2%} {mean['net_weighted']:>9.2%} {mean['vote_plain']:>9.2%} "
          f"{mean['vote_weighted']:>9.2%}")
    print(f"paired difference: network {100 * (mean['net_weighted'] - mean['net_plain']):+.2f} points, "
          f"vote {100 * (mean['vote_weighted'] - mean['vote_plain']):+.2f}")


if __name__ == "__main__":
    main()
