"""Shared helpers for the training tests: a tiny real table built from sklearn's digits."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SRC = str(Path(__file__).resolve().parents[1] / "src")
CLASSES = [f"d{i}" for i in range(10)]

# Tiny, fast recipe overrides for tests: a small ConvNet on 16 px digits.
FAST = ["model=convnet-xxs", "image_size=16", "batch_size=32", "epochs=2", "lr=0.01", "rrc_scale=null",
        "hflip=0", "rotation=0", "color_jitter=null", "collect=false", "log_every=0.5"]


def write_digits(folder: Path, *, start: int, n: int, undefined: int = 0) -> Path:
    """Write ``n`` digits (from index ``start``) as PNGs under ``folder/<class>/`` (+ ``undefined/``)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(start, start + n + undefined):
        img = (d.images[i] * (255 / 16)).astype(np.uint8)
        sub = "undefined" if i >= start + n else CLASSES[d.target[i]]
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").resize((16, 16)).save(folder / sub / f"{i}.png")
    return folder


def make_digit_tables(project, tmp_path: Path, *, n_train: int = 320, n_val: int = 160, undefined: int = 20):
    """Tables ``dig-train`` (with undefined rows) and ``dig-val`` in ``project``."""
    from dataloupe.tables import import_imagefolder

    write_digits(tmp_path / "img-train", start=0, n=n_train, undefined=undefined)
    write_digits(tmp_path / "img-val", start=1000, n=n_val)
    import_imagefolder(project, tmp_path / "img-train", table="dig-train", unlabeled_dir="undefined",
                       classes=CLASSES)
    import_imagefolder(project, tmp_path / "img-val", table="dig-val", classes=CLASSES)


def cli_env(project: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["DATALOUPE_PROJECT"] = str(project)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dataloupe", *args]
