"""Shared helpers for the serve tests: real tiny images and a real checkpoint per the contract."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataloupe.data import decode_image
from dataloupe.models import create_model

SRC = Path(__file__).resolve().parents[1] / "src"
CM_TEST = Path("/work/shared/datasets/chihuahua-muffin/test128")
DIGIT_CLASSES = ["zero", "one"]


def write_digit_pngs(folder: Path, per_class: int = 8) -> list[tuple[Path, int]]:
    """sklearn's 8x8 digits 0 and 1, written as real PNG files; returns (path, class index)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for cls in (0, 1):
        idx = np.flatnonzero(d.target == cls)[:per_class]
        for i in idx:
            img = (d.images[i] * (255 / 16)).astype(np.uint8)
            path = folder / f"{DIGIT_CLASSES[cls]}_{i}.png"
            Image.fromarray(img, "L").save(path)
            out.append((path, cls))
    return out


def cm_images(per_class: int = 4) -> list[tuple[Path, int]]:
    """A few chihuahua/muffin test JPEGs (class 0 = chihuahua), or [] when the data is absent."""
    out = []
    for cls, name in enumerate(("chihuahua", "muffin")):
        folder = CM_TEST / name
        if not folder.is_dir():
            return []
        out += [(p, cls) for p in sorted(folder.glob("*.jpg"))[:per_class]]
    return out


def make_run(project_root: Path, run: str, samples: list[tuple[Path, int]], classes: list[str], *,
             image_size: int = 32, small_input: bool = False, steps: int = 6, seed: int = 0) -> Path:
    """Train ``steps`` real Adam steps on ``samples`` and write ``runs/<run>`` per the contract."""
    with one_thread():
        return _make_run(project_root, run, samples, classes, image_size=image_size, small_input=small_input,
                         steps=steps, seed=seed)


@contextmanager
def one_thread():
    """Run torch on one thread: on a busy 2-core machine two spinning threads are ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _make_run(project_root, run, samples, classes, *, image_size, small_input, steps, seed) -> Path:
    torch.manual_seed(seed)
    pixels = np.stack([decode_image(p, image_size) for p, _ in samples]).astype(np.float32) / 255.0
    mean = pixels.mean(axis=(0, 1, 2)).tolist()
    std = (pixels.std(axis=(0, 1, 2)) + 1e-3).tolist()
    x = torch.from_numpy(((pixels - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(0, 3, 1, 2).copy())
    y = torch.tensor([c for _, c in samples])
    model = create_model("resnet18", len(classes), small_input=small_input)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():  # settle the batch-norm running statistics on the final weights
        for _ in range(10):
            model(x)
    model.eval()
    with torch.no_grad():
        top1 = float((model(x).argmax(1) == y).float().mean())
    run_dir = project_root / "runs" / run
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({
        "model": model.state_dict(), "model_name": "resnet18", "num_classes": len(classes),
        "classes": list(classes), "image_size": image_size, "small_input": small_input,
        "mean": mean, "std": std, "epoch": steps, "val_top1": top1,
    }, run_dir / "checkpoints" / "best.pt")
    (run_dir / "run.json").write_text(json.dumps({
        "run": run, "status": "completed", "recipe": "test", "train_table": "digits", "train_revision": 1,
        "val_table": "digits", "val_revision": 1, "seed": seed, "epochs": 1, "epochs_done": 1,
        "best_val_top1": top1, "best_epoch": 0,
    }))
    return run_dir


def subprocess_env(project: Path | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = "1"  # see one_thread()
    if project is not None:
        env["DATALOUPE_PROJECT"] = str(project)
    return env


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dataloupe", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A project with run ``digits`` (resnet18, 32 px, 0-vs-1) and its training PNGs."""
    root = tmp_path_factory.mktemp("serve-project")
    samples = write_digit_pngs(root / "digits")
    make_run(root, "digits", samples, DIGIT_CLASSES)
    return root, samples


@pytest.fixture(autouse=True)
def single_thread():
    """Serve tests run torch on one thread (see :func:`one_thread`); import this into each module."""
    with one_thread():
        yield


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (1-bit grey): a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
