"""One epoch's numbers, summed over every process: what ``history.jsonl`` records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dataloupe.train._distributed import DistContext


@dataclass(frozen=True)
class EpochStats:
    """An epoch's totals over all processes (all-reduced), and the history record they make.

    Attributes:
        train_loss_sum, train_correct, train_count: training loss summed over the rows
            trained on, how many were predicted right, and how many there were.
        val_loss_sum, val_top1, val_top5, val_count: the same over the labeled validation
            rows (top-1 and top-5 correct counts); all 0 on an epoch ``eval_every`` skipped.
        seconds: training seconds summed over processes.
        margin_sum, margin_count: `(N,)` per training row, summed logit margins and how
            many times the row was drawn (training dynamics).
        evaluated: whether the validation pass ran this epoch.
        world_size: processes that contributed.
    """

    train_loss_sum: float
    train_correct: float
    train_count: float
    val_loss_sum: float
    val_top1: float
    val_top5: float
    val_count: float
    seconds: float
    margin_sum: np.ndarray
    margin_count: np.ndarray
    evaluated: bool
    world_size: int = 1

    @classmethod
    def reduce(cls, ctx: DistContext, train: dict, val: dict | None) -> "EpochStats":
        """Sum ``train_one_epoch``'s and ``evaluate``'s (None: skipped) numbers over the processes."""
        ev = val or {"loss_sum": 0.0, "top1": 0, "top5": 0, "count": 0}
        sums = ctx.all_reduce_sum(torch.tensor([train["loss_sum"], train["correct"], train["count"], ev["loss_sum"],
                                                ev["top1"], ev["top5"], ev["count"], train["seconds"]]))
        msum = ctx.all_reduce_sum(torch.from_numpy(train["margin_sum"])).numpy()
        mcnt = ctx.all_reduce_sum(torch.from_numpy(train["margin_count"])).numpy()
        return cls(*sums.tolist(), margin_sum=msum, margin_count=mcnt, evaluated=val is not None,
                   world_size=ctx.world_size)

    @property
    def train_loss(self) -> float:
        return self.train_loss_sum / self.train_count

    @property
    def val_loss(self) -> float:
        """Mean validation loss (0.0 on an epoch without the validation pass)."""
        return self.val_loss_sum / self.val_count if self.evaluated else 0.0

    def record(self, epoch: int, *, num_classes: int, lr: float, unlabeled_used: float | None = None) -> dict:
        """The epoch's ``history.jsonl`` record (keys in docs/architecture.md, "Runs")."""
        rec = {"epoch": epoch, "train_loss": self.train_loss, "train_top1": self.train_correct / self.train_count}
        if self.evaluated:
            rec.update(val_loss=self.val_loss, val_top1=self.val_top1 / self.val_count)
            if num_classes >= 5:
                rec["val_top5"] = self.val_top5 / self.val_count
        if unlabeled_used is not None:
            rec["unlabeled_used"] = unlabeled_used
        seconds = self.seconds / self.world_size
        rec.update(lr=lr, images_per_s=self.train_count / seconds, seconds=seconds)
        return rec
