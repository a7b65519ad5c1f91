"""One loop iteration of the demo, retrained with recipe variants: paired against the shipped keys.

The demo's accuracy moves by +-1.5 points with the training seed alone, so a variant is only
worth a row when it is compared with the shipped recipe on the *same* revision and the *same*
training seeds, in the same run. For each training seed this trains iteration ``--iteration``
of the policy (its recipe and overrides, read from the policy file) on ``TABLE@REV`` once as
shipped and once per variant, and prints val top-1 per seed, the mean, the paired difference
to the shipped recipe and the time ratio. Every model is its last epoch (the policy's
``checkpoint: last``): validation labels choose nothing.

The revision comes from a demo project: ``dataloupe demo --seed 0 --project P`` leaves
``demo-train@2`` (after cleaning) and ``demo-val`` there.

    PYTHONPATH=src python bench/demo_variants.py --project P --seeds 0 1 2 \\
        --variant "swa_epochs=5 swa_lr=0.01 epochs=19" --variant "amp=bf16"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def iteration_keys(policy_name: str, iteration: int, loop: str = "demo") -> tuple[str, list[str]]:
    """The policy's recipe and its ``key=value`` overrides for ``iteration`` (1-based) of the loop
    named ``loop`` (``continue_from: previous`` / ``judge`` name that loop's runs, as the loop does)."""
    sys.path.insert(0, str(ROOT / "src"))
    from dataloupe.loop import load_policy
    from dataloupe.loop._loop import iteration_overrides

    policy = load_policy(policy_name)
    keys = iteration_overrides(policy, loop, iteration)  # continue_from: previous / judge, as the loop resolves it
    return policy.recipe, [f"{k}={json.dumps(v) if isinstance(v, (list, bool)) else v}" for k, v in keys.items()]


def train_once(args, recipe: str, keys: list[str], run: str) -> dict:
    cmd = [sys.executable, "-m", "dataloupe", "train", "--train", args.train, "--val", args.val, "--recipe", recipe,
           *keys, "collect=false", "--project", str(args.project), "--run", run, "--force"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{run} failed:\n{out.stderr[-3000:]}")
    info = json.loads((args.project / "runs" / run / "run.json").read_text())
    return {"val_top1": info["best_val_top1"], "seconds": time.perf_counter() - t0}


def earlier_run(args, run: str, seed: int) -> dict:
    """A finished run's val top-1 and wall seconds (from its run.json); it must have trained
    ``args.train`` with training seed ``seed``."""
    from datetime import datetime

    path = args.project / "runs" / run / "run.json"
    if not path.is_file():
        sys.exit(f"--shipped-from/--shipped-run: no run {run} in {args.project}")
    info = json.loads(path.read_text())
    trained_on = f"{info.get('train_table')}@{info.get('train_revision')}"
    wanted = trained_on if "@" in args.train else info.get("train_table")  # "TABLE" names any revision
    if wanted != args.train:
        sys.exit(f"--shipped-from/--shipped-run: {run} trained on {trained_on}, not {args.train}")
    if info.get("seed") != seed:
        sys.exit(f"--shipped-from/--shipped-run: {run} trained with seed {info.get('seed')}, not {seed}")
    seconds = (datetime.fromisoformat(info["finished"]) - datetime.fromisoformat(info["created"])).total_seconds()
    return {"val_top1": info["best_val_top1"], "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True, help="a project made by `dataloupe demo`")
    ap.add_argument("--train", default="demo-train@2")
    ap.add_argument("--val", default="demo-val")
    ap.add_argument("--policy", default="fashion-mnist-demo")
    ap.add_argument("--iteration", type=int, default=2, help="which iteration's keys (1-based)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--variant", action="append", default=[], help='extra keys, e.g. "amp=bf16" (repeatable)')
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--shipped-from", metavar="PREFIX", help="reuse the shipped runs PREFIX0-s<seed> of an earlier "
                    "run of this script on the same revision (training is deterministic for a revision, code and "
                    "seed) instead of training them again")
    ap.add_argument("--shipped-run", metavar="RUN", help="with one training seed: the shipped row is the finished "
                    "run RUN, e.g. the loop's own iteration (demo-s1-it2 trains the policy's keys with seed 0)")
    ap.add_argument("--prefix", default="variant", help="runs are named PREFIX<i>-s<seed>; use a new one to keep "
                    "earlier runs of the project")
    args = ap.parse_args()
    if args.shipped_run and (args.shipped_from or len(args.seeds) != 1):
        ap.error("--shipped-run names one run: use it with one --seeds value and without --shipped-from")
    loop = args.train.split("@")[0].removesuffix("-train")  # the demo's tables are <loop>-train, <loop>-val
    recipe, shipped = iteration_keys(args.policy, args.iteration, loop)
    taken = [f"{args.prefix}{i}-s{s}" for i in range(len(args.variant) + 1) for s in args.seeds
             if (args.project / "runs" / f"{args.prefix}{i}-s{s}" / "run.json").is_file()]
    if taken:
        sys.exit(f"runs {', '.join(taken)} exist in {args.project}: pass another --prefix")
    variants = [("shipped", [])] + [(v, shlex.split(v)) for v in args.variant]
    rows = {name: [] for name, _ in variants}
    for seed in args.seeds:
        for i, (name, extra) in enumerate(variants):
            if i == 0 and (args.shipped_from or args.shipped_run):
                r = earlier_run(args, args.shipped_run or f"{args.shipped_from}0-s{seed}", seed)
                rows[name].append(r)
                continue
            r = train_once(args, recipe, shipped + extra + [f"seed={seed}"], f"{args.prefix}{i}-s{seed}")
            rows[name].append(r)
            print(f"seed {seed} {name}: {100 * r['val_top1']:.2f}% in {r['seconds']:.0f} s", file=sys.stderr)
    base = rows["shipped"]
    base_mean = sum(r["val_top1"] for r in base) / len(base)
    base_time = sum(r["seconds"] for r in base)
    print(f"{args.train}, iteration {args.iteration} of {args.policy}; val top-1 per training seed "
          f"{' / '.join(map(str, args.seeds))}")
    print(f"{'variant':<40} {'per seed':<26} {'mean':>6} {'vs shipped':>10} {'time x':>6}")
    for name, _ in variants:
        accs = [r["val_top1"] for r in rows[name]]
        mean = sum(accs) / len(accs)
        diff = "" if name == "shipped" else f"{100 * (mean - base_mean):+.2f}"
        ratio = sum(r["seconds"] for r in rows[name]) / base_time
        print(f"{name:<40} {' / '.join(f'{100 * a:.2f}' for a in accs):<26} {100 * mean:6.2f} {diff:>10} {ratio:6.2f}")
    if args.json:
        args.json.write_text(json.dumps({"seeds": args.seeds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
