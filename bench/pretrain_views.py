"""Self-supervised views per image (lightly, PIL, in the loader) against batched on the device.

Runs ``dataloupe pretrain`` twice on the same tables and config, once with ``augment=lightly``
and once with ``augment=batched``, back to back in one process, and prints the training
images per second of each (the kNN monitor's pass excluded), their ratio and the kNN monitor
after the last epoch. On a GPU the batched views are meant to stop the GPU waiting for the
loader; on a CPU they show what the per-image PIL steps cost next to the model.

    PYTHONPATH=src python bench/pretrain_views.py --project P --table cm-train \\
        --method simclr --image-size 64 --batch-size 128 --epochs 2 [--model resnet18] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dataloupe.project import Project  # noqa: E402
from dataloupe.train import pretrain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--table", action="append", required=True, help="repeatable")
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: the loader's choice)")
    ap.add_argument("--prefix", default="views", help="runs are PREFIX-lightly and PREFIX-batched (replaced)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    project = Project(args.project)
    rows = []
    for augment in ("lightly", "batched"):
        config = {"method": args.method, "model": args.model, "image_size": args.image_size,
                  "batch_size": args.batch_size, "epochs": args.epochs, "augment": augment, "collect": False,
                  "num_workers": args.workers}
        run = f"{args.prefix}-{augment}"
        shutil.rmtree(project.runs_dir / run, ignore_errors=True)  # a run of an earlier benchmark
        t0 = time.perf_counter()
        info = pretrain(project, args.table, config, run=run, tty=False)
        wall = time.perf_counter() - t0
        hist = [json.loads(x) for x in (project.runs_dir / run / "history.jsonl").read_text().splitlines()]
        images = sum(h["images"] for h in hist)
        seconds = sum(h["seconds"] for h in hist)
        rows.append({"augment": augment, "images_per_s": images / seconds, "train_s": seconds, "wall_s": wall,
                     "knn_top1": info.get("knn_top1"), "device": info["hardware"].get("device")})
    base = rows[0]["images_per_s"]
    print(f"\n{args.method} {args.model} {args.image_size} px, batch {args.batch_size}, {args.epochs} epochs on "
          f"{', '.join(args.table)} ({rows[0]['device']})")
    print(f"{'views':10s} {'img/s':>8s} {'x lightly':>9s} {'train s':>8s} {'wall s':>7s} {'kNN top-1':>9s}")
    for r in rows:
        knn = f"{r['knn_top1']:.3f}" if r["knn_top1"] is not None else "-"
        print(f"{r['augment']:10s} {r['images_per_s']:8.1f} {r['images_per_s'] / base:9.2f} {r['train_s']:8.1f} "
              f"{r['wall_s']:7.1f} {knn:>9s}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
