"""Optimizers and learning-rate schedules by name."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from dataloupe.project import DataloupeError


def build_optimizer(model: nn.Module, name: str, *, lr: float, momentum: float = 0.9, nesterov: bool = True,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``sgd`` (Nesterov by default), ``adam`` or ``adamw``; no weight decay on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise DataloupeError(f"unknown optimizer {name!r}; known: sgd, adam, adamw")


class Schedule:
    """A learning-rate schedule stepped per batch (``step``) or per epoch (``epoch_end``).

    Wraps the torch scheduler so the engine calls the same two methods for all of them.
    With ``hold_lr``, the schedule spans ``epochs`` and every step after them runs at the
    constant ``hold_lr`` (SWA's phase).
    """

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, *, lr: float, epochs: int,
                 steps_per_epoch: int, warmup_fraction: float = 0.3, min_lr: float = 0.0,
                 plateau_factor: float = 0.1, plateau_patience: int = 3, hold_lr: float | None = None):
        self.name = name
        total = max(1, epochs * steps_per_epoch)
        self.total = total
        self._steps = 0
        self.optimizer = optimizer
        self.hold_lr = hold_lr
        if name == "onecycle":
            # OneCycleLR divides by each phase's length in steps: each needs more than one step
            # (a tiny run, e.g. 3 steps, would otherwise die of ZeroDivisionError).
            pct = min(max(warmup_fraction, 1.5 / (total + 1)), (total - 0.5) / (total + 1))
            self.sched = torch.optim.lr_scheduler.OneCycleLR(
                # total + 1: OneCycleLR's schedule ends at step total_steps - 1, and we step `total` times
                optimizer, max_lr=lr, total_steps=total + 1, pct_start=pct,
                anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4, cycle_momentum=False,
            )
        elif name == "cosine":
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda s: (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(s, total) / total))) / lr,
            )
        elif name == "plateau":
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=plateau_factor, patience=plateau_patience
            )
        elif name == "none":
            self.sched = None
        else:
            raise DataloupeError(f"unknown scheduler {name!r}; known: none, onecycle, cosine, plateau")

    def progress(self) -> float:
        """Share of the planned optimizer steps taken so far (0..1; resumes with the schedule)."""
        if self.holding:
            return 1.0
        done = getattr(self.sched, "last_epoch", 0) if self.name in ("onecycle", "cosine") else self._steps
        return min(1.0, max(0, done) / self.total)

    @property
    def holding(self) -> bool:
        """Past the schedule, at the constant ``hold_lr``."""
        return self.hold_lr is not None and self._steps >= self.total

    def _hold(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.hold_lr

    def step(self) -> None:
        """After each optimizer step."""
        self._steps += 1
        if self.holding:
            self._hold()
        elif self.name in ("onecycle", "cosine"):
            self.sched.step()

    def epoch_end(self, val_loss: float) -> None:
        """After each epoch's evaluation."""
        if self.name == "plateau" and math.isfinite(val_loss) and not self.holding:
            self.sched.step(val_loss)

    def state_dict(self) -> dict:
        return self.sched.state_dict() if self.sched is not None else {}

    def resume(self, state: dict, steps_done: int) -> None:
        """Continue after ``steps_done`` optimizer steps.

        Step-wise schedules are fast-forwarded on the current plan (so a resumed run may
        change ``epochs``); the plateau schedule reloads its state.
        """
        if self.name == "plateau" and state:
            self.sched.load_state_dict(state)
        elif self.name in ("onecycle", "cosine"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(min(steps_done, self.total)):
                    self.sched.step()
        self._steps = steps_done
        if self.holding:
            self._hold()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
