"""The demo across scenario draws: baseline / oracle / loop and the gap closed, per seed.

Each seed draws its own Fashion-MNIST few-labels scenario (which 20 rows per class are
labeled, which 10% of them are flipped, which 6,000 rows form the pool and which 2,000 test
images the validation set). For every seed ``dataloupe demo --seed N --json`` trains the
baseline (the labels given) and the oracle (every row with its true label) in the same run
as the loop, so each row of the table compares against its own baselines. Seeds share one
project (the Fashion-MNIST import is done once) and rerun instantly when finished.

    PYTHONPATH=src python bench/demo_seeds.py [--seeds 0 7 11] [--project DIR] [--policy P]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 7])
    ap.add_argument("--project", type=Path, default=ROOT / "bench" / ".demo-project")
    ap.add_argument("--policy", default="fashion-mnist-demo")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    rows = []
    for seed in args.seeds:
        out = subprocess.run([sys.executable, "-m", "dataloupe", "demo", "--seed", str(seed), "--json", "--policy",
                              args.policy, "--project", str(args.project)], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(f"seed {seed} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout))
        print(f"seed {seed} done: {out.stdout.strip()[:200]}", file=sys.stderr)
    pct = lambda v: "   -  " if v is None else f"{100 * v:6.2f}"  # noqa: E731
    print(f"{'seed':>4} {'baseline':>8} {'oracle':>7} {'loop':>7} {'gap':>5} {'labels ok':>9} {'coverage':>8} {'min':>5}")
    for r in rows:
        gap = "  -  " if r["gap_closed"] is None else f"{r['gap_closed']:5.2f}"
        print(f"{r['seed']:>4} {pct(r['baseline']):>8} {pct(r['oracle']):>7} {pct(r['loop']):>7} {gap} "
              f"{pct(r['auto_label_precision']):>9} {pct(r['auto_label_coverage']):>8} {r['minutes']:5.1f}")
    gaps = [r["gap_closed"] for r in rows if r["gap_closed"] is not None]
    if gaps:
        print(f"mean gap closed {sum(gaps) / len(gaps):.2f} over {len(gaps)} seed(s)")


if __name__ == "__main__":
    main()
