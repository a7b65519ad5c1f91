"""Report figures as PNG bytes (matplotlib ``Figure`` objects drawn by their own Agg canvas,
no pyplot, so no global backend is set): curves, confusion matrix, map."""

from __future__ import annotations

import io

import numpy as np


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _figure(w: float, h: float, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    return fig, fig.subplots(1, ncols)


def curves_png(history: list[dict]) -> bytes | None:
    """Loss and top-1 per epoch (train and val) from ``history.jsonl`` records."""
    if not history:
        return None
    fig, (ax_loss, ax_acc) = _figure(9, 3.2, 2)
    ep = [h["epoch"] for h in history]
    for key, ax in (("loss", ax_loss), ("top1", ax_acc)):
        for side in ("train", "val"):
            ys = [h.get(f"{side}_{key}") for h in history]
            if any(y is not None for y in ys):
                ax.plot(ep, [np.nan if y is None else y for y in ys], marker="o", label=side)
        ax.set_xlabel("epoch"), ax.set_title(key), ax.legend(), ax.grid(alpha=0.3)
    return _png(fig)


def confusion_png(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> bytes | None:
    """Row-normalised confusion matrix (true label rows, predicted columns) with counts."""
    if len(labels) == 0:
        return None
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, predicted), 1)
    size = min(2 + 0.45 * k, 14)
    fig, ax = _figure(size, size * 0.85)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(k)
    ax.set_xticks(ticks, classes, rotation=90 if k > 6 else 0), ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("label")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    return _png(fig)


def map_png(coords: np.ndarray, labels: np.ndarray, classes: list[str], *, issues: np.ndarray | None = None,
            title: str = "") -> bytes | None:
    """2-D scatter coloured by label (undefined grey), label issues ringed in red."""
    if len(coords) == 0:
        return None
    import matplotlib

    fig, ax = _figure(7, 6)
    s = max(1.0, min(12.0, 20000 / len(coords)))
    undef = labels < 0
    ax.scatter(coords[undef, 0], coords[undef, 1], s=s, c="#bbbbbb", label="undefined", linewidths=0)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for c, name in enumerate(classes):
        m = labels == c
        if m.any():
            ax.scatter(coords[m, 0], coords[m, 1], s=s, color=cmap(c % cmap.N), label=name, linewidths=0)
    if issues is not None and issues.any():
        ax.scatter(coords[issues, 0], coords[issues, 1], s=s * 4, facecolors="none", edgecolors="red",
                   linewidths=0.8, label="label issue")
    ax.set_title(title), ax.set_xticks([]), ax.set_yticks([])
    if len(classes) <= 20:
        ax.legend(markerscale=2, fontsize=7, loc="best")
    return _png(fig)
