"""Shared fixtures: tiny real image tables built from scikit-learn's bundled digits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
CM_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "chihuahua-muffin"


def digit_images(n_per_class: int = 10, classes=(0, 1, 2), size: int = 16, seed: int = 0):
    """Real 8x8 digits (sklearn) upscaled to ``size`` px RGB: list of (class, uint8 image)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    out = []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(d.target == c))[:n_per_class]
        for i in idx:
            img = (d.images[i] * (255 / 16)).astype(np.uint8)
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))
            out.append((str(c), np.stack([img] * 3, -1)))
    return out


def write_imagefolder(root: Path, n_per_class=10, classes=(0, 1, 2), n_unlabeled=6) -> Path:
    """``root/<digit>/*.png`` plus ``root/undefined/*.png``."""
    imgs = digit_images(n_per_class + n_unlabeled, classes)
    counters: dict[str, int] = {}
    for c, img in imgs:
        k = counters.get(c, 0)
        counters[c] = k + 1
        folder = root / (c if k < n_per_class else "undefined")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{c}_{k:03d}.png")
    return root


@pytest.fixture
def project(tmp_path):
    from dataloupe.project import Project

    return Project.open(tmp_path / "proj")


@pytest.fixture
def digits_dir(tmp_path) -> Path:
    return write_imagefolder(tmp_path / "digits")


@pytest.fixture
def cli(tmp_path):
    """Run ``python -m dataloupe ...`` in a subprocess against a temporary project."""
    proj = tmp_path / "cliproj"

    def run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                   DATALOUPE_PROJECT=str(proj))
        r = subprocess.run([sys.executable, "-m", "dataloupe", *map(str, args)], env=env,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        return r

    run.project_dir = proj
    return run
