"""Synthetic image folders for the benchmarks (made on the spot; nothing is downloaded).

``make_jpeg_folder`` writes ``root/<class>/<i>.jpg`` at ImageNet-like sizes (default
width 400-500, height 300-400, quality 90: 40-70 KB each, decoded in ~3-5 ms by libjpeg-turbo
like an ImageNet photo), smooth colour fields with texture so JPEG works as hard as on a photo.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _one(args) -> int:
    path, w, h, seed, quality = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), dtype=np.int16)
    img = img + rng.normal(0, 10, img.shape).astype(np.int16)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=quality)
    return os.path.getsize(path)


def make_jpeg_folder(root: Path, n: int, *, classes: int = 10, width=(400, 500), height=(300, 400),
                     quality: int = 90, seed: int = 0, workers: int | None = None) -> dict:
    """Write ``n`` JPEGs under ``root/c<k>/`` (reused when ``root/.done`` says the same).

    Returns:
        ``{"images", "classes", "bytes", "mean_kb"}``.
    """
    root = Path(root)
    stamp = root / ".done"
    key = f"{n} {classes} {width} {height} {quality} {seed}"
    if stamp.is_file() and stamp.read_text().splitlines()[0] == key:
        total = int(stamp.read_text().splitlines()[1])
        return {"images": n, "classes": classes, "bytes": total, "mean_kb": total / n / 1024}
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(n):
        folder = root / f"c{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:07d}.jpg", int(rng.integers(*width, endpoint=True)),
                     int(rng.integers(*height, endpoint=True)), seed * 1_000_003 + i, quality))
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        total = sum(pool.map(_one, jobs, chunksize=64))
    stamp.write_text(f"{key}\n{total}\n")
    return {"images": n, "classes": classes, "bytes": total, "mean_kb": total / n / 1024}
