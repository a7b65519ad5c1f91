"""Training throughput: model-only vs our full engine vs a seed-style PIL loop.

(a) model-only: train steps on synthetic tensors already on the device (the ceiling);
(b) engine: the engine's own setup (``build_setup``: decoded uint8 cache, loader,
    augmentation, model, optimiser) and its ``train_one_epoch`` (normalisation, MixUp/
    CutMix, per-sample margin bookkeeping) on the cached chihuahua-muffin table, with
    ``augment=v2`` (per-image v2 on uint8 tensors) and ``augment=batched``; best epoch
    after the first;
(c) seed-style: ImageFolder-like PIL open + per-sample torchvision transforms
    (RandomResizedCrop, flip, rotation, ColorJitter, ToTensor, Normalize), DataLoader
    batch 16, num_workers 0, the same model and optimizer.
All three in one run, same model (ResNet-18 by default), batch, optimizer and threads.

CPU (the issue's table):
    PYTHONPATH=src python bench/train_throughput.py --sizes 64 128
NHWC against NCHW, model-only, in the same run (the demo's ConvNet at 28 px):
    PYTHONPATH=src python bench/train_throughput.py --model convnet-xs --sizes 28 --batch 320 --skip-seed \
        --nchw --folder ../shared/datasets/chihuahua-muffin/train128 --epochs 1
bf16 autocast against float32 on the CPU, model-only (amp: native on a CPU with AMX or AVX512-BF16):
    PYTHONPATH=src python bench/train_throughput.py --sizes 128 64 --batch 64 --skip-seed --bf16 \
        --folder ../shared/datasets/chihuahua-muffin/test128 --epochs 1
GPU (ResNet-50 224 px bf16 + channels_last; synthetic and cached-decoded path):
    PYTHONPATH=src python bench/train_throughput.py --device cuda --model resnet50 --sizes 224 \
        --batch 256 --all-rows --skip-seed --steps 50 --epochs 3 [--compile]
    (set DATALOUPE_CM_DIR to the chihuahua-muffin train128 folder on that machine)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dataloupe.models import create_model
from dataloupe.project import Project
from dataloupe.train import load_recipe
from dataloupe.train._engine import build_setup
from dataloupe.train._epoch import train_one_epoch
from dataloupe.train._distributed import DistContext
from dataloupe.train._inputs import TrainData
from dataloupe.data import SampleSet, sample_set_from_table

CM_DIR = os.environ.get("DATALOUPE_CM_DIR", "/work/shared/datasets/chihuahua-muffin/train128")


class Clock:
    """Wall seconds and this process's CPU seconds (CPU time is robust to other jobs on a shared
    machine when torch uses one thread; on an idle machine the two agree)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, n):
        return n / (time.perf_counter() - self.wall), n / max(time.process_time() - self.cpu, 1e-9)


def _amp(device, bf16_cpu=False):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16_cpu else torch.autocast("cpu", enabled=False)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(model_name, size, batch, device, steps, small_input, compile_=False, channels_last=True, bf16=False):
    # NHWC on every device, as the engine does (recipe key ``channels_last``, default true)
    torch.manual_seed(0)
    m = create_model(model_name, 2, small_input=small_input).to(device)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    if compile_:
        m = torch.compile(m)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)
    m.train()
    for i in range(steps + 3):
        if i == 3:
            _sync(device)
            clock = Clock()
        with _amp(device, bf16):
            loss = F.cross_entropy(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return clock.rates(steps * batch)


def engine(project, data, model_name, size, batch, device, epochs, small_input, augment="auto", compile_=False):
    r = load_recipe("chihuahua-muffin-resnet18", [f"model={model_name}", f"image_size={size}", f"batch_size={batch}",
                                                  f"epochs={epochs}", "collect=false", "scheduler=none",
                                                  f"small_input={str(small_input).lower()}", "log_every=1e9",
                                                  f"device={device.type}", f"augment={augment}",
                                                  f"compile={str(compile_).lower()}"])
    ctx = DistContext(device=device)
    train_set, val_set = data.train.subset(data.train.trainable), data.val.subset(data.val.trainable)
    s = build_setup(project, data, r, ctx, train_set, val_set)  # the engine's own model, loaders, optimiser
    best = (0.0, 0.0)
    for epoch in range(1, epochs + 1):
        torch.manual_seed(epoch)
        s.sampler.set_epoch(epoch)
        _sync(device)
        clock = Clock()
        out = train_one_epoch(s.model, s.train_loader, optimizer=s.optimizer, schedule=s.schedule, opts=s.opts,
                              num_samples=s.num_train, mix=s.mix)
        _sync(device)
        rates = clock.rates(out["count"])
        if epoch > 1 or epochs == 1:  # epoch 1 includes warm-up
            best = max(best, rates)
    return best


def seed_style(root: Path, model_name, size, batch, device, max_batches, small_input):
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1)), T.RandomHorizontalFlip(),
                    T.RandomRotation(15), T.ColorJitter(0.2, 0.2, 0.2, 0.02), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    files = [(p, i) for i, c in enumerate(["chihuahua", "muffin"]) for p in sorted((root / c).glob("*"))]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            p, y = files[i]
            return tf(Image.open(p).convert("RGB")), y

    torch.manual_seed(0)
    m = create_model(model_name, 2, small_input=small_input).to(device)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(DS(), batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    n, clock = 0, Clock()
    for b, (x, y) in enumerate(loader):
        if b >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    _sync(device)
    return clock.rates(n)


def folder_rows(root: Path, repeat: int) -> tuple[SampleSet, list[str]]:
    """Rows of FOLDER/<class>/* repeated ``repeat`` times (distinct ids, same files)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files = [(f"{c}/{p.name}", k) for k, c in enumerate(classes) for p in sorted((root / c).iterdir())]
    paths = [p for p, _ in files] * repeat
    labels = np.array([k for _, k in files] * repeat, np.int64)
    n = len(paths)
    return SampleSet(np.arange(n, dtype=np.int64), labels, np.ones(n, np.float32), paths, root.resolve(),
                     f"folder-{root.name}-{n}"), classes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=12, help="model-only timed steps")
    ap.add_argument("--epochs", type=int, default=2, help="engine epochs (the last one is reported)")
    ap.add_argument("--seed-batches", type=int, default=12)
    ap.add_argument("--skip-seed", action="store_true")
    ap.add_argument("--all-rows", action="store_true",
                    help="train on all 4,733 rows with labels id %% 2 (throughput only; GPU needs more than 200)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (a) and (b)")
    ap.add_argument("--nchw", action="store_true",
                    help="also time (a) in the NCHW memory format (channels_last off), the ratio in the same run")
    ap.add_argument("--bf16", action="store_true",
                    help="also (a) in bf16 autocast on the CPU (recipe key amp: native on a CPU with AMX or "
                         "AVX512-BF16)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating repeats; the best of each is reported")
    ap.add_argument("--project", default=None, help="project folder (default: a temporary one)")
    ap.add_argument("--folder", default=None,
                    help="build the rows straight from FOLDER/<class>/* instead of a table (no pylance "
                         "needed, e.g. on a GPU machine); implies every row is trained on")
    ap.add_argument("--repeat", type=int, default=1, help="with --folder: repeat the rows N times")
    args = ap.parse_args()
    device = torch.device(args.device)
    project = Project.open(args.project or tempfile.mkdtemp(prefix="dataloupe-bench-"))
    if args.folder:
        s, classes = folder_rows(Path(args.folder), args.repeat)
        data = TrainData(s, s, classes, "folder", 0, "folder", 0)
    else:
        from dataloupe.tables import import_imagefolder, open_table

        if "cm-train" not in [p.name for p in project.tables_dir.iterdir()]:
            import_imagefolder(project, CM_DIR, table="cm-train", unlabeled_dir="undefined")
        t = open_table(project, "cm-train")
        s = sample_set_from_table(t, list(t.classes))
        if args.all_rows:
            s = SampleSet(s.ids, s.ids % 2, np.ones(len(s), np.float32), s.paths, s.root, s.content_key)
        data = TrainData(s, s.subset(s.trainable), list(t.classes), "cm-train", t.revision, "cm-train",
                         t.revision)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, model {args.model}, "
          f"batch {args.batch}, train rows {int(s.trainable.sum())}")
    rows = []
    for size in args.sizes:
        small = size <= 32
        best = {k: (0.0, 0.0) for k in ("a", "v2", "batched", "c", "nchw", "bf16")}
        for _ in range(args.rounds):  # alternate, keep the best: a shared machine's noise only slows things
            best["a"] = max(best["a"], model_only(args.model, size, args.batch, device, args.steps, small,
                                                  args.compile))
            if args.nchw:
                best["nchw"] = max(best["nchw"], model_only(args.model, size, args.batch, device, args.steps, small,
                                                            args.compile, channels_last=False))
            if args.bf16:
                best["bf16"] = max(best["bf16"], model_only(args.model, size, args.batch, device, args.steps, small,
                                                            args.compile, bf16=True))
            for aug in ("v2", "batched"):
                best[aug] = max(best[aug], engine(project, data, args.model, size, args.batch, device, args.epochs,
                                                  small, aug, args.compile))
            if not args.skip_seed:
                best["c"] = max(best["c"], seed_style(Path(CM_DIR), args.model, size, args.batch, device,
                                                      args.seed_batches, small))
        rows.append((size, best))
    for j, unit in ((0, "images per wall-clock second"), (1, "images per CPU second of this process")):
        print(f"\n{unit}")
        print(f"{'px':>4} {'(a) model':>10} {'(b) engine v2':>14} {'(b) batched':>12} {'(c) seed':>9}"
              f" {'b/a v2':>7} {'b/a bat':>8} {'b/c v2':>7} {'b/c bat':>8}")
        for size, r in rows:
            a, v2, bt = r["a"][j], r["v2"][j], r["batched"][j]
            c = r["c"][j] or float("nan")
            print(f"{size:>4} {a:10.1f} {v2:14.1f} {bt:12.1f} {c:9.1f} {v2 / a:7.2f} {bt / a:8.2f} {v2 / c:7.2f}"
                  f" {bt / c:8.2f}")
        if args.nchw:
            print(f"{'px':>4} {'(a) NHWC':>10} {'(a) NCHW':>10} {'NHWC/NCHW':>10}")
            for size, r in rows:
                print(f"{size:>4} {r['a'][j]:10.1f} {r['nchw'][j]:10.1f} {r['a'][j] / r['nchw'][j]:10.2f}")
        if args.bf16:
            print(f"{'px':>4} {'(a) fp32':>10} {'(a) bf16':>10} {'bf16/fp32':>10}")
            for size, r in rows:
                print(f"{size:>4} {r['a'][j]:10.1f} {r['bf16'][j]:10.1f} {r['bf16'][j] / r['a'][j]:10.2f}")

if __name__ == "__main__":
    main()
