"""The checkpoint schema (its one home) and checkpoints written atomically.

A model checkpoint is the dict of :func:`model_checkpoint` (docs/architecture.md, "Runs");
serving and export read it by :data:`REQUIRED_KEYS` and keep :data:`SERVING_KEYS`.
Writes go through a temp file in the same folder, fsync, then rename: a failure while
writing (e.g. out of disk space) removes the temp file and leaves the previous checkpoint
untouched.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dataloupe._fileio import atomic_path, write_failure
from dataloupe.project import DataloupeError


def atomic_save(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` so that readers see the old file or the new one, never half.

    Raises:
        DataloupeError: the write failed (the message names the cause; the old file survives).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as e:  # torch's zip writer raises RuntimeError on a full disk
        raise DataloupeError(f"could not write checkpoint {path} ({write_failure(path, e)});"
                             " the previous one is intact") from e


# Keys every model checkpoint holds (a file without one of them is not a dataloupe checkpoint).
REQUIRED_KEYS = ("model", "model_name", "num_classes", "classes", "image_size", "small_input", "mean", "std")
# What an exported state dict keeps: the required keys plus what serving reads (no training state).
SERVING_KEYS = REQUIRED_KEYS + ("epoch", "val_top1", "tta_hflip", "amp")


def missing_keys(ckpt: dict) -> list[str]:
    """The :data:`REQUIRED_KEYS` that ``ckpt`` lacks."""
    return [k for k in REQUIRED_KEYS if k not in ckpt]


def model_checkpoint(model, *, model_name: str, classes: list[str], image_size: int, small_input: bool,
                     mean, std, epoch: int, val_top1: float | None, tta_hflip: bool = False,
                     amp: str = "auto") -> dict:
    """The checkpoint dict of architecture.md (model = state dict of the unwrapped Classifier)."""
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_name": model_name,
        "num_classes": len(classes),
        "classes": list(classes),
        "image_size": int(image_size),
        "small_input": bool(small_input),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "epoch": int(epoch),
        "tta_hflip": bool(tta_hflip),
        "amp": amp,  # the recipe's autocast setting: collect evaluates as training did
        "val_top1": None if val_top1 is None else float(val_top1),  # None: an epoch eval_every skipped
    }


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataloupeError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
