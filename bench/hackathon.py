"""The hackathon benchmark: chihuahua vs muffin from scratch, zero hand labels, this CPU.

On ``../shared/datasets/chihuahua-muffin`` (200 labeled photos, 4,533 unlabeled, test128 as
validation) it runs, each on its own copy of the training table:

  (a) baseline   the starter recipe (chihuahua-muffin-resnet18) on the 200 labeled images;
  (b) hackathon  ``dataloupe loop --policy hackathon`` (the story's steps, automated);
  (c) default    ``dataloupe loop --policy default`` (our best).

and prints test128 top-1 (best epoch of the final model; validation labels only pick the
checkpoint and report), wall and CPU minutes, rows auto-labeled per class, and the loop's
own estimate of its auto-label precision (test128 replayed as a hidden part of the pool:
the auto-label rule runs on it with the labels hidden, then it is scored). The baseline, measured in the same run, is the reference.

    PYTHONPATH=src python bench/hackathon.py [--data DIR] [--only baseline default] [--project DIR]
    # a second attempt with another policy, kept apart from the first:
    PYTHONPATH=src python bench/hackathon.py --only default --policy my.yaml --suffix -mine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dataloupe.loop import run_loop  # noqa: E402
from dataloupe.loop._loop import cpu_seconds  # noqa: E402
from dataloupe.project import Project  # noqa: E402
from dataloupe.tables import import_imagefolder, list_tables, open_table  # noqa: E402
from dataloupe.train import train  # noqa: E402

VARIANTS = ("baseline", "hackathon", "default")


def _tables(project: Project, data: Path, variant: str, suffix: str = "") -> str:
    have = {t["name"] for t in list_tables(project)}
    if "cm-test" not in have:
        import_imagefolder(project, data / "test128", table="cm-test")
    name = f"cm-train-{variant}{suffix}"
    if name not in have:
        import_imagefolder(project, data / "train128", table=name, unlabeled_dir="undefined")
    return name


def auto_labeled(project: Project, table: str) -> dict:
    """Rows labeled since revision 1, per class (the loop's automatic labels)."""
    first = open_table(project, table, 1).to_arrow(columns=["id", "label"])
    pool = set(first.filter(pc.is_null(first["label"]))["id"].to_pylist())
    now = open_table(project, table).to_arrow(columns=["id", "label"])
    out: dict[str, int] = {}
    for i, lab in zip(now["id"].to_pylist(), now["label"].to_pylist()):
        if i in pool and lab is not None:
            out[lab] = out.get(lab, 0) + 1
    return dict(sorted(out.items())) | {"pool": len(pool)}


def run_variant(project: Project, data: Path, variant: str, iterations: int | None, *,
                policy: str | None = None, suffix: str = "") -> dict:
    table = _tables(project, data, variant, suffix)
    t0, c0 = time.time(), cpu_seconds()
    if variant == "baseline":
        info = train(project, table, "cm-test", "chihuahua-muffin-resnet18", run="hk-baseline", tty=False,
                     overrides={"collect": False},
                     resume=(project.runs_dir / "hk-baseline" / "run.json").exists())
        rows = [{"iteration": 1, "val_top1": info["best_val_top1"], "run": "hk-baseline"}]
    else:
        loop = f"hk-{variant}{suffix}"
        res = run_loop(project, train=table, val="cm-test", policy=policy or variant, name=loop,
                       iterations=iterations, resume=(project.root / "loops" / loop / "state.json").exists())
        rows = res.iterations
    final = rows[-1]
    est = final.get("auto_label_estimate") or {}
    return {"variant": variant, "test_top1": final["val_top1"], "best_iteration_top1": max(r["val_top1"] for r in rows),
            "iterations": len(rows), "minutes": round((time.time() - t0) / 60, 1),
            "cpu_minutes": round((cpu_seconds() - c0) / 60, 1), "auto_labeled": auto_labeled(project, table),
            "est_precision": est.get("cumulative_precision", est.get("precision")),
            "est_coverage": est.get("coverage"), "per_iteration": [
                {k: r.get(k) for k in ("iteration", "labeled", "undefined", "excluded", "val_top1", "minutes",
                                       "auto_label_estimate")} for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "chihuahua-muffin")
    ap.add_argument("--project", type=Path, default=ROOT / "bench" / ".hackathon-project")
    ap.add_argument("--only", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--iterations", type=int, default=None, help="Loop iterations (default: the policy's).")
    ap.add_argument("--policy", default=None,
                    help="A policy YAML to run in place of the shipped one (loop variants; pair with --suffix).")
    ap.add_argument("--suffix", default="",
                    help="Appended to the loop variants' table and loop names, to keep a second attempt apart.")
    ap.add_argument("--out", type=Path, default=None, help="Also write the results as JSON here.")
    a = ap.parse_args()
    if not (a.data / "train128").is_dir() or not (a.data / "test128").is_dir():
        sys.exit(f"chihuahua-muffin data not found at {a.data} (expected train128/ and test128/); pass --data DIR")
    project = Project.open(a.project)
    results = []
    for v in a.only:
        print(f"=== {v} ===", flush=True)
        results.append(run_variant(project, a.data, v, a.iterations, policy=a.policy, suffix=a.suffix))
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{'variant':<10} {'test128 top-1':>13} {'vs baseline':>11} {'minutes':>8} {'CPU-min':>8} "
          f"{'auto-labeled (per class)':<34} {'est. precision':>14}")
    base = next((r["test_top1"] for r in results if r["variant"] == "baseline"), None)
    for r in results:
        al = r["auto_labeled"]
        per = ", ".join(f"{k} {v}" for k, v in al.items() if k != "pool")
        cover = sum(v for k, v in al.items() if k != "pool") / max(1, al["pool"])
        gain = "" if base is None else f"{100 * (r['test_top1'] - base):+.2f} pt"
        est = "-" if r["est_precision"] is None else f"{100 * r['est_precision']:.1f}%"
        print(f"{r['variant']:<10} {100 * r['test_top1']:>12.2f}% {gain:>11} {r['minutes']:>8.1f} "
              f"{r['cpu_minutes']:>8.1f} {(per or '-') + f' ({100 * cover:.0f}% of pool)':<34} {est:>14}")
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
