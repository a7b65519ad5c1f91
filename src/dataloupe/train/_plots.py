"""PNG plots of a run's history (accuracy or kNN monitor, loss, LR per epoch) and of an LR range test.

Figures are ``matplotlib.figure.Figure`` objects drawn by their own Agg canvas: no pyplot,
so importing this module changes no global backend and keeps no figure registry.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dataloupe._fileio import atomic_path


def _subplots(figsize=(6, 4)):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save(fig, path: Path) -> None:
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")


def plot_history(history: list[dict], folder: Path) -> list[Path]:
    """Write ``accuracy.png``, ``loss.png`` and ``lr.png`` into ``folder``; returns the paths."""
    if not history:
        return []
    ep = [h["epoch"] for h in history]
    out = []
    fig, ax = _subplots()
    ax.plot(ep, [h["train_top1"] for h in history], "o-", label="train top-1")
    ev = [h for h in history if "val_top1" in h]  # epochs skipped by eval_every have no val keys
    ax.plot([h["epoch"] for h in ev], [h["val_top1"] for h in ev], "o-", label="val top-1")
    if ev and all("val_top5" in h for h in ev):
        ax.plot([h["epoch"] for h in ev], [h["val_top5"] for h in ev], "o-", label="val top-5")
    ax.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, folder / "accuracy.png")
    out.append(folder / "accuracy.png")
    fig, ax = _subplots()
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    ax.plot([h["epoch"] for h in ev], [h["val_loss"] for h in ev], "o-", label="val loss")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, folder / "loss.png")
    out.append(folder / "loss.png")
    fig, ax = _subplots()
    ax.plot(ep, [h["lr"] for h in history], "o-")
    ax.set(xlabel="epoch", ylabel="learning rate (end of epoch)", title="learning rate", yscale="log")
    ax.grid(alpha=0.3)
    _save(fig, folder / "lr.png")
    out.append(folder / "lr.png")
    return out


def plot_pretrain_history(history: list[dict], folder: Path) -> list[Path]:
    """Write ``loss.png``, ``knn_top1.png`` (when measured) and ``lr.png`` of a pretrain run into ``folder``."""
    if not history:
        return []
    ep = [h["epoch"] for h in history]
    out = []
    fig, ax = _subplots()
    ax.plot(ep, [h["loss"] for h in history], "o-")
    ax.set(xlabel="epoch", ylabel="self-supervised loss", title="loss")
    ax.grid(alpha=0.3)
    _save(fig, folder / "loss.png")
    out.append(folder / "loss.png")
    knn = [(h["epoch"], h["knn_top1"]) for h in history if h.get("knn_top1") is not None]
    if knn:
        fig, ax = _subplots()
        ax.plot([e for e, _ in knn], [v for _, v in knn], "o-")
        ax.set(xlabel="epoch", ylabel="leave-one-out kNN top-1 (labeled rows)", ylim=(0, 1.02), title="kNN monitor")
        ax.grid(alpha=0.3)
        _save(fig, folder / "knn_top1.png")
        out.append(folder / "knn_top1.png")
    lrs = [h["lr"] for h in history]
    fig, ax = _subplots()
    ax.plot(ep, lrs, "o-")
    ax.set(xlabel="epoch", ylabel="learning rate (end of epoch)", title="learning rate",
           yscale="log" if min(lrs) > 0 else "linear")  # a cosine schedule ends at 0
    ax.grid(alpha=0.3)
    _save(fig, folder / "lr.png")
    out.append(folder / "lr.png")
    return out


def plot_lr_find(lrs: list[float], losses: list[float], suggested: float, path: Path) -> Path:
    """Loss vs learning rate (log x) with the suggested LR marked."""
    fig, ax = _subplots()
    ax.plot(lrs, losses)
    ax.axvline(suggested, color="red", ls="--", label=f"suggested {suggested:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)", title="LR range test")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return path
