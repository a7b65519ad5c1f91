"""Training dynamics: each training sample's logit margin per epoch -> AUM and forgetting.

Margins come from the training forward pass itself (augmented inputs, as in the AUM
paper), so recording them costs no extra pass. ``dynamics.npz`` holds ``ids (N,)``,
``epochs (E,)`` and ``margins (E, N)`` float32 (NaN where a sample was not drawn that
epoch; the mean when it was drawn several times).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataloupe._fileio import atomic_path


def aum(margins: np.ndarray) -> np.ndarray:
    """``(N,)`` area under the margin: mean margin over the epochs a sample was seen (NaN: never)."""
    seen = ~np.isnan(margins)
    total = np.where(seen, margins, 0.0).sum(0)
    n = seen.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan).astype(np.float32)


def forgetting_events(margins: np.ndarray) -> np.ndarray:
    """``(N,)`` int32 count of correct (margin > 0) -> incorrect transitions between seen epochs."""
    out = np.zeros(margins.shape[1], dtype=np.int32)
    prev = np.full(margins.shape[1], np.nan)
    for row in margins:
        seen = ~np.isnan(row)
        out += (seen & (prev > 0) & (row <= 0)).astype(np.int32)
        prev = np.where(seen, row, prev)
    return out


class Dynamics:
    """Per-epoch margins of the training samples (positions = training-set order)."""

    def __init__(self, ids: np.ndarray, epochs: int):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.margins = np.full((epochs, len(self.ids)), np.nan, dtype=np.float32)
        self.done = 0

    def record(self, epoch: int, margin_sum: np.ndarray, margin_count: np.ndarray) -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            self.margins[epoch - 1] = np.where(margin_count > 0, margin_sum / np.maximum(margin_count, 1), np.nan)
        self.done = max(self.done, epoch)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            np.savez(tmp, ids=self.ids, epochs=np.arange(1, self.done + 1), margins=self.margins[: self.done])

    @classmethod
    def load(cls, path: Path, ids: np.ndarray, epochs: int, *, upto: int) -> "Dynamics":
        """Reload the first ``upto`` epochs (resume); missing epochs stay NaN."""
        dyn = cls(ids, epochs)
        if Path(path).is_file():
            with np.load(path) as z:
                if np.array_equal(z["ids"], dyn.ids):
                    m = z["margins"][:upto]
                    dyn.margins[: len(m)] = m
        dyn.done = upto
        return dyn
