"""The hackathon on one GPU: how far self-supervision + semi-supervision go in minutes.

On ``chihuahua-muffin`` (200 labeled photos, 4,533 undefined, test128 = validation), each
stage in its own process with its own time limit, in this order (a failed or timed-out
stage is recorded and the rest still run):

  baseline     the starter recipe (ResNet-18, 128 px, cosine, mirror-averaged eval) on
               the 200 labeled rows, 20 epochs;
  ssl          ``dataloupe pretrain --method simclr`` on every train128 row (undefined
               included, labels only for the kNN monitor), as many epochs as fit the
               ``--ssl-seconds`` budget (a one-epoch calibration run measures the rate;
               on CUDA the views are drawn on the GPU, ``augment: auto``);
  ft           the baseline recipe started from ``pretrained=run:ssl`` at ``--ft-lr`` (1e-4:
               a tenth of the recipe's, as fine-tuning a learnt backbone wants);
  ft-fixmatch  the same plus consistency training on the undefined rows (FixMatch: hard
               guesses above 0.95 from an EMA teacher, strong crops), ``--fixmatch-epochs``;
  fixmatch     the same consistency recipe from scratch (no SSL), if time is left.

Every stage reports test128 top-1 of its last epoch (``checkpoint: last``: validation labels
pick no model) and its wall seconds; ``ssl + ft-fixmatch`` is the zero-label pipeline's time.
Writes ``<out>/gpu-hackathon.json`` and ``.md``.

    python bench/gpu_hackathon.py --data ../shared/datasets/chihuahua-muffin --out /tmp/gh
    python bench/gpu_hackathon.py --smoke --out /tmp/gh-smoke     # CPU, synthetic images, < 3 min
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

STARTER = ["scheduler=cosine", "tta_hflip=true", "checkpoint=last", "collect=false"]
FIXMATCH = ["batch_size=64", "unlabeled_weight=1.0", "unlabeled_ratio=4",
            "unlabeled_threshold=0.95", "ema_decay=0.995", "unlabeled_strong_scale=[0.2, 1.0]"]


def _smoke_data(work: Path) -> Path:
    """A folder laid out like chihuahua-muffin, of synthetic JPEGs (two classes, a pool, a test set)."""
    from _synthetic import make_jpeg_folder

    root = work / "cm-smoke"
    make_jpeg_folder(root / "train128", 24, classes=2, width=(60, 80), height=(48, 60), seed=1)
    make_jpeg_folder(root / "pool", 40, classes=1, width=(60, 80), height=(48, 60), seed=2)
    make_jpeg_folder(root / "test128", 16, classes=2, width=(60, 80), height=(48, 60), seed=3)
    undefined = root / "train128" / "undefined"
    if not undefined.exists():
        (root / "pool" / "c000").rename(undefined)
    return root


def _run(cmd: list[str], log: Path, timeout: float, done: Path | None = None) -> int | None:
    """Run ``cmd``; 0 once ``done`` (run.json) says completed, even if the process lingers at exit."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    end = time.perf_counter() + max(1.0, timeout)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            try:
                return proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            finished = False
            if done is not None and done.is_file():
                try:
                    finished = json.loads(done.read_text()).get("status") == "completed"
                except ValueError:
                    pass
            if finished or time.perf_counter() > end:
                if finished:
                    time.sleep(3)
                os.killpg(proc.pid, signal.SIGKILL)  # its loader workers too
                proc.wait()
                return 0 if finished else None


def _history(project: Path, run: str) -> list[dict]:
    path = project / "runs" / run / "history.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="chihuahua-muffin folder (train128/, test128/)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu-hackathon")
    ap.add_argument("--work", default=None, help="project and logs (default: a temporary folder)")
    ap.add_argument("--budget", type=float, default=420, help="seconds for every stage together")
    ap.add_argument("--ssl-seconds", type=float, default=150, help="pretraining budget (calibration included)")
    ap.add_argument("--ssl-batch", type=int, default=256)
    ap.add_argument("--fixmatch-epochs", type=int, default=40)
    ap.add_argument("--ft-lr", type=float, default=1e-4,
                    help="learning rate of the stages started from the SSL backbone (the recipe's is 1e-3)")
    ap.add_argument("--fixmatch-samples", type=int, default=1280, help="labeled draws per FixMatch epoch")
    ap.add_argument("--workers", type=int, default=None, help="loader workers for pretraining (default: cores - 2)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["baseline", "ft", "fixmatch"],
                    help="stages not to run (their time goes to the later stages)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run on synthetic images")
    a = ap.parse_args()
    t_start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work or tempfile.mkdtemp(prefix="dataloupe-gpu-hackathon-"))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    from dataloupe.project import Project
    from dataloupe.tables import import_imagefolder

    data = _smoke_data(work) if a.smoke else Path(a.data or ROOT.parent / "shared" / "datasets" / "chihuahua-muffin")
    size = 32 if a.smoke else 128
    small = ["epochs=1", "image_size=32", "batch_size=8"] if a.smoke else []
    fixmatch = [*FIXMATCH, f"epoch_samples={16 if a.smoke else a.fixmatch_samples}"]
    workers = a.workers or max(1, (os.cpu_count() or 2) - 2)
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "cpus": os.cpu_count(), "data": str(data), "smoke": a.smoke,
                    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "stages": {}}
    t0 = time.perf_counter()
    proj = work / "project"
    project = Project.open(proj)
    import_imagefolder(project, data / "train128", table="cm-train", unlabeled_dir="undefined")
    import_imagefolder(project, data / "test128", table="cm-test")
    report["import_s"] = time.perf_counter() - t0
    dl = [sys.executable, "-m", "dataloupe"]

    def left() -> float:
        return a.budget - (time.perf_counter() - t_start)

    def stage(name: str, cmd: list[str], run: str, limit: float) -> dict:
        limit = min(limit, left())
        if name in a.skip:
            rec = {"skipped": "--skip"}
        elif limit < 5:
            rec = {"skipped": "out of time budget"}
        else:
            t = time.perf_counter()
            rc = _run(cmd, work / f"{name}.log", limit, proj / "runs" / run / "run.json")
            hist = _history(proj, run)
            rec = {"seconds": round(time.perf_counter() - t, 1), "rc": rc, "epochs_done": len(hist)}
            if hist:
                last = hist[-1]
                rec.update({k: last[k] for k in ("val_top1", "knn_top1", "images_per_s") if k in last})
                vals = [h["val_top1"] for h in hist if h.get("val_top1") is not None]
                if vals:
                    rec["best_val_top1"] = max(vals)
                    rec["curve"] = [round(v, 4) for v in vals]
                knn = [h["knn_top1"] for h in hist if h.get("knn_top1") is not None]
                if knn:
                    rec["knn_curve"] = [round(v, 4) for v in knn]
                secs = [h["seconds"] for h in hist if h.get("seconds")]
                if secs:
                    rec["epoch_s"] = round(min(secs), 2)
            if rc != 0:
                rec["log_tail"] = (work / f"{name}.log").read_text(errors="replace")[-1500:]
        report["stages"][name] = rec
        print(f"[{name}] {json.dumps({k: v for k, v in rec.items() if k not in ('curve', 'knn_curve', 'log_tail')})}",
              flush=True)
        if "log_tail" in rec:
            print(rec["log_tail"][-600:], flush=True)
        (out / "gpu-hackathon.json").write_text(json.dumps(report, indent=1))
        return rec

    train = [*dl, "train", "--train", "cm-train", "--val", "cm-test", "--recipe", "chihuahua-muffin-resnet18",
             "--project", str(proj)]
    pre = [*dl, "pretrain", "--table", "cm-train", "--method", "simclr", "--project", str(proj),
           f"image_size={size}", f"batch_size={8 if a.smoke else a.ssl_batch}", "collect=false",
           f"num_workers={workers}"]
    stage("baseline", [*train, *STARTER, *small, "--run", "baseline"], "baseline", 90)
    cal = stage("ssl-cal", [*pre, "epochs=1", "--run", "ssl-cal"], "ssl-cal", 60)
    per_epoch = cal.get("epoch_s") or cal.get("seconds") or 10.0
    ssl_left = a.ssl_seconds - cal.get("seconds", 0) - 15  # start-up and the final save
    epochs = 1 if a.smoke else max(5, min(400, int(ssl_left / per_epoch)))
    report["ssl_epochs_planned"] = epochs
    ssl = stage("ssl", [*pre, f"epochs={epochs}", "--run", "ssl"], "ssl", a.ssl_seconds + 60)
    ssl_ok = ssl.get("rc") == 0
    if ssl_ok:
        ft_lr = f"lr={a.ft_lr}"
        stage("ft", [*train, *STARTER, *small, "pretrained=run:ssl", ft_lr, "--run", "ft"], "ft", 90)
        fm_epochs = [f"epochs={1 if a.smoke else a.fixmatch_epochs}"] + (["image_size=32"] if a.smoke else [])
        fm = stage("ft-fixmatch", [*train, *STARTER, *fixmatch, *fm_epochs, "pretrained=run:ssl",
                                   ft_lr, "--run", "ft-fixmatch"], "ft-fixmatch", 240)
        if fm.get("rc") == 0:
            report["zero_label_pipeline_s"] = round(ssl["seconds"] + fm["seconds"], 1)
    stage("fixmatch", [*train, *STARTER, *fixmatch, f"epochs={1 if a.smoke else a.fixmatch_epochs}",
                       *(["image_size=32"] if a.smoke else []), "--run", "fixmatch"], "fixmatch", 240)
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    (out / "gpu-hackathon.json").write_text(json.dumps(report, indent=1))
    lines = [f"# hackathon on {report['gpu'] or 'CPU'} ({'smoke' if a.smoke else 'full'}), torch {report['torch']}, "
             f"{report['cpus']} CPUs, {report['date']}", "", "| stage | test128 top-1 (last) | best | epochs | s |",
             "|---|---:|---:|---:|---:|"]
    for name, r in report["stages"].items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped ({r['skipped']}) | | | |")
            continue
        v = r.get("val_top1")
        b = r.get("best_val_top1")
        knn = f" (kNN {r['knn_top1']:.3f})" if r.get("knn_top1") is not None else ""
        lines.append(f"| {name}{' FAILED rc=' + str(r['rc']) if r['rc'] != 0 else ''} | "
                     f"{'' if v is None else f'{100 * v:.2f}%'}{knn} | {'' if b is None else f'{100 * b:.2f}%'} | "
                     f"{r['epochs_done']} | {r['seconds']:.0f} |")
    lines += ["", f"SSL epochs planned {epochs}; zero-label pipeline (ssl + ft-fixmatch) "
                  f"{report.get('zero_label_pipeline_s', 'n/a')} s; total {report['total_s']} s."]
    (out / "gpu-hackathon.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r.get("rc") == 0 for r in report["stages"].values() if "rc" in r) else 1


if __name__ == "__main__":
    sys.exit(main())
