"""The training store's loader vs the loose-file PIL path, images per CPU-second at 224 px.

A synthetic folder of JPEGs at ImageNet-like sizes (width 400-500, height 300-400,
quality 90; bench/_synthetic.py) is made first. Then, in one process with one thread
(``num_workers=0``: the loader alone, no model), each path produces ``--measure`` images
as ``(B, 3, 224, 224)`` uint8 batches, in a random order:

  baseline A  loose files, dataloupe's ``stream`` loader (PIL open + draft + resize + crop);
  baseline B  loose files, torchvision ImageFolder style (PIL open, convert, RandomResizedCrop
              224, PILToTensor), the classic ImageNet recipe's loader;
  store       ``loader=store`` with short side 224 and 256, CPU decode, fragment-order sampling.

Reported: images per CPU-second of the process (per core; robust to other jobs on a
shared machine) and per wall second; the store's build time and size on ``--build`` images.

    PYTHONPATH=src python bench/store_loader.py [--build 100000] [--measure 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _synthetic import make_jpeg_folder  # noqa: E402

from dataloupe.data import (SampleSet, WeightedEpochSampler, build_store, fragment_blocks, make_loader,  # noqa: E402
                            plan_loader)


def folder_samples(root: Path) -> SampleSet:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    paths, labels = [], []
    for k, c in enumerate(classes):
        names = sorted(p.name for p in (root / c).iterdir())
        paths += [f"{c}/{n}" for n in names]
        labels += [k] * len(names)
    n = len(paths)
    return SampleSet(np.arange(n, dtype=np.int64), np.array(labels, np.int64), np.ones(n, np.float32), paths,
                     root.resolve(), f"bench-{root.name}-{n}")


def timed(batches, limit: int) -> tuple[float, float]:
    n = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for x in batches:
        n += len(x)
        if n >= limit:
            break
    return n / (time.process_time() - c0), n / (time.perf_counter() - w0)


def stream_path(s: SampleSet, size: int, batch: int, seed: int):
    plan = plan_loader(len(s), size, loader="stream", num_workers=0)
    sampler = WeightedEpochSampler(s.weights, seed=seed)
    for x, _, _ in make_loader(s, plan, image_size=size, batch_size=batch, sampler=sampler):
        yield x


def torchvision_path(s: SampleSet, size: int, batch: int, seed: int):
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(size), T.PILToTensor()])
    order = np.random.default_rng(seed).permutation(len(s))
    for b in range(0, len(order), batch):
        yield torch.stack([tf(Image.open(s.root / s.paths[i]).convert("RGB")) for i in order[b:b + batch]])


def store_path_batches(s: SampleSet, store, size: int, batch: int, seed: int):
    plan = plan_loader(len(s), size, loader="store", num_workers=0)
    sampler = WeightedEpochSampler(s.weights, seed=seed, blocks=fragment_blocks(store, s))
    for x, _, _ in make_loader(s, plan, image_size=size, batch_size=batch, cache=store, sampler=sampler):
        yield x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=int, default=100_000, help="images in the folder (store build time and size)")
    ap.add_argument("--subset", type=int, default=10_000, help="images the loaders read from (and the 256 px store)")
    ap.add_argument("--measure", type=int, default=2000, help="images per loader measurement")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="alternating repeats; the best of each is kept")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "dataloupe-store-bench")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    made = make_jpeg_folder(a.work / "jpeg", a.build, classes=100)
    print(f"{a.build:,} JPEGs ({made['mean_kb']:.0f} KB mean, {made['bytes'] / 2**30:.2f} GiB) ready in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    s = folder_samples(a.work / "jpeg")
    sub = s.subset(np.arange(len(s)) < a.subset)
    sub = SampleSet(sub.ids, sub.labels, sub.weights, sub.paths, sub.root, f"{s.content_key}-first{len(sub)}")
    stores = {}
    for side, rows in ((a.size, s), (256, sub)):
        t0, c0 = time.perf_counter(), time.process_time()
        store = build_store(rows, a.work / "cache", short_side=side)
        build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
        stores[side] = store
        src = sum(os.path.getsize(rows.root / p) for p in rows.paths)
        print(f"store short side {side}, {len(rows):,} images: built in {build_s:.0f} s wall ({build_cpu:.0f} CPU-s"
              f" of this process, {os.cpu_count()} threads), {store.nbytes() / 2**30:.2f} GiB "
              f"({store.nbytes() / src:.2f}x the JPEG files)", flush=True)
    s = sub
    paths = {"A: loose files, stream loader (PIL)": lambda seed: stream_path(s, a.size, a.batch, seed),
             "B: loose files, torchvision PIL RandomResizedCrop": lambda seed: torchvision_path(s, a.size, a.batch,
                                                                                              seed)}
    for side, store in stores.items():
        paths[f"store, short side {side}, CPU decode"] = (lambda seed, st=store: store_path_batches(
            s, st, a.size, a.batch, seed))
    best = {k: (0.0, 0.0) for k in paths}
    for r in range(a.rounds):
        for name, fn in paths.items():
            best[name] = max(best[name], timed(fn(r), a.measure))
    base = best["A: loose files, stream loader (PIL)"][0]
    print(f"\n{'path (' + str(a.size) + ' px, loader alone, 1 thread)':<52} {'img/CPU-s':>10} {'img/s wall':>11}"
          f" {'vs A':>6}")
    for name, (cpu, wall) in best.items():
        print(f"{name:<52} {cpu:>10.1f} {wall:>11.1f} {cpu / base:>6.2f}")


if __name__ == "__main__":
    main()
