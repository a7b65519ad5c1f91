"""LR range test: raise the learning rate exponentially each step, watch the loss.

Example:
    >>> res = lr_find(Project.open(), "cm-train", load_recipe("chihuahua-muffin-resnet18"))  # doctest: +SKIP
    >>> res["suggested_lr"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dataloupe.data import (AugmentConfig, WeightedEpochSampler, close_loaders, make_loader, open_cache, open_store,
                            plan_loader, sample_transform)
from dataloupe.data import sample_set_from_table
from dataloupe.models import amp_dtype, create_model
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import open_ref
from dataloupe.train._epoch import StepOptions
from dataloupe.train._model_init import small_input_for
from dataloupe.train._plots import plot_lr_find
from dataloupe.train._recipe import Recipe
from dataloupe.train._schedules import build_optimizer


def suggest_lr(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The LR of the steepest descent of the smoothed loss (before it diverges)."""
    if len(lrs) < 3:
        return float(lrs[0])
    best = int(np.argmin(losses))
    upto = max(best, 2)
    grads = np.gradient(losses[: upto + 1], np.log(lrs[: upto + 1]))
    return float(lrs[int(np.argmin(grads))])


def lr_range_test(model, loader, opts: StepOptions, optimizer, *, start_lr: float, end_lr: float,
                  steps: int, beta: float = 0.9, diverge: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """``(lrs (S,), smoothed losses (S,))``; stops early when the loss exceeds ``diverge`` x best."""
    factor = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    lrs, losses, avg, best = [], [], 0.0, math.inf
    model.train()
    it, step = iter(loader), 0
    while step < steps:
        try:
            images, labels, _ = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        lr = start_lr * factor**step
        for g in optimizer.param_groups:
            g["lr"] = lr
        with opts.autocast():
            loss = F.cross_entropy(model(opts.inputs(images)).float(), labels.to(opts.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        avg = beta * avg + (1 - beta) * float(loss)
        smooth = avg / (1 - beta**step)
        lrs.append(lr)
        losses.append(smooth)
        best = min(best, smooth)
        if not math.isfinite(smooth) or smooth > diverge * best:
            break
    return np.array(lrs), np.array(losses)


def lr_find(project: Project, table: str, recipe: Recipe, *, start_lr: float = 1e-7, end_lr: float = 10.0,
            steps: int = 100, plot: Path | None = None) -> dict:
    """Run the LR range test of ``recipe`` on ``table``; writes the loss-vs-LR plot.

    Returns:
        dict with ``suggested_lr``, ``plot`` (path), ``lrs`` and ``losses`` lists.
    """
    t = open_ref(project, table)
    samples = sample_set_from_table(t, list(t.classes))
    train_set = samples.subset(samples.trainable)
    if len(train_set) == 0:
        raise DataloupeError(f"table {t.name}@{t.revision} has no labeled rows with weight > 0")
    torch.manual_seed(recipe.seed)
    model = create_model(recipe.model, len(t.classes), small_input=small_input_for(recipe))
    plan = plan_loader(len(samples), recipe.image_size, loader=recipe.loader, cache_max_gb=recipe.cache_max_gb,
                       num_workers=recipe.num_workers, large="store")
    if plan.mode == "cache":
        cache = open_cache(samples, recipe.image_size, project.cache_dir)
    elif plan.mode == "store":  # the training run will read this store too
        cache = open_store(samples, project.cache_dir, short_side=recipe.store_short_side or recipe.image_size,
                           quality=recipe.store_quality)
    else:
        cache = None
    loader = make_loader(train_set, plan, image_size=recipe.image_size, batch_size=recipe.batch_size, cache=cache,
                         transform=sample_transform(AugmentConfig.from_recipe(recipe)),
                         sampler=WeightedEpochSampler(train_set.weights, seed=recipe.seed), seed=recipe.seed)
    model.to(torch.device("cuda" if torch.cuda.is_available() and recipe.device != "cpu" else "cpu"))
    optimizer = build_optimizer(model, recipe.optimizer, lr=start_lr, momentum=recipe.momentum,
                                nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    cuda = torch.cuda.is_available() and recipe.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device)
    opts = StepOptions(device, tuple(recipe.mean), tuple(recipe.std), amp_dtype(recipe.amp, device))
    try:
        lrs, losses = lr_range_test(model, loader, opts, optimizer, start_lr=start_lr, end_lr=end_lr, steps=steps)
    finally:
        close_loaders(loader)
    suggested = suggest_lr(lrs, losses)
    plot = plot or project.root / "lr-find" / f"{recipe.name}-{t.name}@{t.revision}.png"
    plot_lr_find(lrs.tolist(), losses.tolist(), suggested, Path(plot))
    return {"suggested_lr": suggested, "plot": str(plot), "table": t.name, "revision": int(t.revision),
            "lrs": lrs.tolist(), "losses": losses.tolist()}
