"""How a run's model starts: its stem (``small_input``), its weights and their normalisation.

``pretrained`` (a file, ``run:NAME`` or ``true``) and ``continue_from`` (a run name) are
resolved against the project here and loaded with :func:`dataloupe.models.load_pretrained`,
which loads every backbone tensor or raises.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from dataloupe.models import HUB_SOURCES, WeightsReport, load_pretrained, supports_small_input
from dataloupe.project import DataloupeError, Project
from dataloupe import runs
from dataloupe.train._recipe import Recipe


def small_input_for(recipe: Recipe) -> bool:
    """``recipe.small_input``, or when None (automatic): ``image_size <= 32`` for models that have a small stem."""
    if recipe.small_input is not None:
        return recipe.small_input
    return recipe.image_size <= 32 and supports_small_input(recipe.model)


def run_checkpoint(project: Project, name: str, label: str) -> str:
    """Run ``name``'s ``checkpoints/best.pt`` (``label`` names the recipe setting in errors)."""
    folder = runs.run_dir(project, name)
    if not folder.is_dir():
        known = ", ".join(runs.list_run_names(project)) or "none"
        raise DataloupeError(f"{label}: unknown run {name!r}; known runs: {known}")
    ckpt = folder / "checkpoints" / "best.pt"
    if not ckpt.is_file():
        raise DataloupeError(f"{label}: run {name!r} has no checkpoint at {ckpt} (not trained yet?)")
    return str(ckpt)


def check_weight_sources(project: Project, recipe: Recipe) -> None:
    """Fail early, with one line, on a ``pretrained`` / ``continue_from`` that names nothing."""
    if recipe.pretrained and recipe.pretrained.startswith("run:"):
        run_checkpoint(project, recipe.pretrained[len("run:"):], f"pretrained={recipe.pretrained}")
    elif recipe.pretrained and recipe.pretrained.lower() not in HUB_SOURCES and not Path(recipe.pretrained).is_file():
        raise DataloupeError(f"pretrained weights not found: {recipe.pretrained}")
    if recipe.continue_from:
        run_checkpoint(project, recipe.continue_from, f"continue_from={recipe.continue_from}")


def init_weights(project: Project, recipe: Recipe, model: nn.Module,
                 classes: list[str] | None = None) -> dict[str, WeightsReport]:
    """Load ``pretrained`` and/or the ``continue_from`` run's best checkpoint (multi-stage).

    Returns:
        ``{"pretrained": report, "continue_from": report}`` for the keys that are set.

    Raises:
        DataloupeError: unknown run, missing checkpoint, or weights that do not fit
            (see :func:`dataloupe.models.load_pretrained`).
    """
    reports = {}
    if recipe.pretrained:
        value = recipe.pretrained
        if value.startswith("run:"):  # a training or pretraining run of this project
            path = run_checkpoint(project, value[len("run:"):], f"pretrained={value}")
            report = dataclasses.replace(load_pretrained(model, path, classes=classes), source=f"{value} ({path})")
        else:  # a local file, or true: timm's download
            report = load_pretrained(model, value, classes=classes)
        reports["pretrained"] = report
    if recipe.continue_from:
        path = run_checkpoint(project, recipe.continue_from, f"continue_from={recipe.continue_from}")
        reports["continue_from"] = load_pretrained(model, path, classes=classes)
    return reports


def choose_normalisation(recipe: Recipe, reports: dict[str, WeightsReport]) -> tuple[list, list, str]:
    """``(mean, std, source)`` to train with.

    The recipe's ``mean``/``std`` win when it sets them away from the defaults; otherwise the
    loaded weights' own (``continue_from`` before ``pretrained``), when they state them;
    otherwise the defaults. ``source`` is ``"recipe"`` or the recipe key whose weights gave them.
    """
    default = Recipe()
    if list(recipe.mean) != default.mean or list(recipe.std) != default.std:
        return list(recipe.mean), list(recipe.std), "recipe"
    for key in ("continue_from", "pretrained"):
        report = reports.get(key)
        if report is not None and report.mean and report.std:
            return list(report.mean), list(report.std), key
    return list(recipe.mean), list(recipe.std), "recipe"
