"""Out-of-sample probabilities for labeled rows by cross-fitting the network itself.

A model's probabilities on the rows it trained on repeat their labels (it memorised them),
wrong labels included; that is the confirmation bias of self-training and why label
errors hide. On small labeled sets the cheapest honest answer is to train the network K
times, each time without one fold, and let each model judge only the fold it never saw.
``analysis`` cross-fits a linear head on embeddings instead, which scales to millions of
rows; here the whole network is refitted, which is far better where the labeled rows are
few (a few hundred) and the embedding itself was shaped by the wrong labels.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

from dataloupe.data import ShardSampler, make_loader, open_cache, plan_loader
from dataloupe.models import create_model
from dataloupe.project import DataloupeError, Project
from dataloupe import runs
from dataloupe.train._checkpoint import load_checkpoint
from dataloupe.train._engine import train_samples
from dataloupe.train._epoch import StepOptions, predict
from dataloupe.train._inputs import load_train_data
from dataloupe.train._recipe import Recipe


def fold_assignment(labels: np.ndarray, folds: int, *, seed: int = 0) -> np.ndarray:
    """``(N,)`` fold index per row, stratified by ``labels``: each class is spread over the folds."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out[idx] = (np.arange(len(idx)) + offset) % folds  # rotate so small classes do not all start in fold 0
        offset += len(idx)
    return out


def crossfit_labeled(project: Project, train_ref: str, val_ref: str, recipe: Recipe, *, folds: int = 5,
                     run_prefix: str, log: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray]:
    """Train ``recipe`` ``folds`` times on the labeled rows of ``train_ref``, each time without one
    fold, and predict every labeled row with the model that did not train on it.

    Runs are ``<run_prefix>-cf<k>`` (finished ones are reused, so a killed loop resumes).
    Validation rows only pick each fold model's checkpoint, as in any run.

    Returns:
        ``(ids (M,), probs (M, K))``: the labeled, trainable rows and their out-of-sample
        class probabilities.
    """
    if folds < 2:
        raise DataloupeError(f"cross-fitting needs at least 2 folds, got {folds}")
    data = load_train_data(project, train_ref, val_ref)
    lab = np.flatnonzero(data.train.trainable)
    if len(lab) < folds:
        raise DataloupeError(f"cross-fitting {folds} folds needs at least {folds} labeled rows; {train_ref} has {len(lab)}")
    fold = fold_assignment(data.train.labels[lab], folds, seed=recipe.seed)
    recipe = dataclasses.replace(recipe, collect=False)
    k_classes = len(data.classes)
    probs = np.zeros((len(lab), k_classes), dtype=np.float32)
    for k in range(folds):
        held = lab[fold == k]
        weights = data.train.weights.copy()
        weights[held] = 0.0  # out of this model's training set (and of its consistency pool: weight 0)
        fold_data = dataclasses.replace(data, train=dataclasses.replace(data.train, weights=weights))
        run = f"{run_prefix}-cf{k + 1}"
        folder = runs.run_dir(project, run)
        info = runs.read_run_at(folder) if (folder / "run.json").is_file() else {}
        if info.get("status") != "completed":
            log(f"cross-fitting fold {k + 1}/{folds}: {run} trains without {len(held)} labeled rows")
            train_samples(project, fold_data, recipe, run=run, resume=(folder / "run.json").is_file(), force=True)
        probs[fold == k] = _predict_rows(project, folder, data.train.subset(np.isin(np.arange(len(data.train)), held)))
    return data.train.ids[lab], probs


def _predict_rows(project: Project, folder, samples) -> np.ndarray:
    """Probabilities ``(len(samples), K)`` of the run in ``folder`` (its best checkpoint), in ``samples`` order."""
    ckpt = load_checkpoint(folder / "checkpoints" / "best.pt")
    model = create_model(ckpt["model_name"], len(ckpt["classes"]), small_input=ckpt["small_input"])
    model.load_state_dict(ckpt["model"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    size = int(ckpt["image_size"])
    opts = StepOptions(device, tuple(ckpt["mean"]), tuple(ckpt["std"]), tta_hflip=bool(ckpt.get("tta_hflip")))
    plan = plan_loader(len(samples), size, cuda=device.type == "cuda")
    cache = open_cache(samples, size, project.cache_dir) if plan.mode == "cache" else None
    loader = make_loader(samples, plan, image_size=size, batch_size=256, cache=cache, sampler=ShardSampler(len(samples)),
                         persistent=False)
    probs, _ = predict(model, loader, opts=opts, num_rows=len(samples), num_classes=len(ckpt["classes"]),
                       emb_dim=model.num_features)
    return probs
