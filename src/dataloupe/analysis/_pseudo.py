"""Pseudo-labels for undefined rows, with thresholds calibrated on labeled rows.

The thresholds come from the labeled rows' (out-of-sample) predictions, never from
validation labels: the global threshold is the lowest confidence t such that, among
labeled rows predicted with confidence >= t, at least ``target_precision`` are correct;
each class gets the same rule restricted to rows predicted as that class (a class that
never reaches the target gets no pseudo-labels). An undefined row is pseudo-labeled when
its confidence clears its predicted class's threshold. The given labels may themselves be
noisy, which makes the measured precision err low and the thresholds conservative. Dropping
suspected label errors from the calibration would be circular (they are the rows the model
disagrees with), and correcting by an estimated noise rate trusts an estimate that a weak
model inflates, so neither is done.
"""

from __future__ import annotations

import numpy as np

from dataloupe.analysis._knn import neighbour_votes



def precision_threshold(confidence: np.ndarray, correct: np.ndarray, *, target_precision: float) -> float:
    """Lowest t with precision(conf >= t) >= target; ``inf`` when never reached.

    Args:
        confidence: `(M,)` top-1 probability of labeled rows.
        correct: `(M,)` bool, prediction equals the given label.
    """
    if len(confidence) == 0:
        return float("inf")
    order = np.argsort(-confidence, kind="stable")
    conf, hit = confidence[order], correct[order].astype(np.float64)
    precision = np.cumsum(hit) / np.arange(1, len(hit) + 1)
    ok = np.flatnonzero(precision >= target_precision)
    if len(ok) == 0:
        return float("inf")
    last = ok[-1]  # the largest prefix still meeting the target
    return float(conf[last])


def pseudo_label(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    target_precision: float = 0.95,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
    calibration_mask: np.ndarray | None = None,
    vote_labels: np.ndarray | None = None,
) -> dict:
    """Pseudo-labels for the rows whose label is -1.

    Args:
        labels: `(N,)` label indices, -1 = undefined.
        probs: `(N, K)` probabilities (out-of-sample for the labeled rows, ideally).
        target_precision: precision the thresholds must reach on labeled rows.
        neighbours: `(sims (N, k), idx (N, k))` kNN of all rows, for neighbour agreement.
        calibration_mask: `(N,)` bool, labeled rows to calibrate on (default all labeled).
        vote_labels: `(N,)` labels neighbours vote with (-1 = no vote; default ``labels``).

    Returns:
        dict with ``rows`` (undefined row indices accepted, most confident first),
        ``predicted``, ``confidence``, ``agreement`` (similarity-weighted share of the
        labeled neighbours voting for the predicted class; NaN when none of the k
        neighbours is labeled) — all aligned
        with ``rows`` — plus ``global_threshold`` and ``class_thresholds`` (K floats).

    Example:
        >>> p = np.array([[0.99, 0.01], [0.98, 0.02], [0.6, 0.4], [0.985, 0.015]])
        >>> r = pseudo_label(np.array([0, 0, 1, -1]), p, target_precision=0.9)
        >>> r["rows"].tolist(), r["global_threshold"]
        ([3], 0.98)
    """
    n, k = probs.shape
    pred, conf = probs.argmax(1), probs.max(1)
    lab = labels >= 0
    if calibration_mask is not None:
        lab = lab & calibration_mask
    correct = pred[lab] == labels[lab]
    global_t = precision_threshold(conf[lab], correct, target_precision=target_precision)
    class_t = np.array([
        precision_threshold(conf[lab][pred[lab] == c], correct[pred[lab] == c], target_precision=target_precision)
        for c in range(k)
    ])
    undefined = np.flatnonzero(labels == -1)
    accept = undefined[conf[undefined] >= class_t[pred[undefined]]]
    accept = accept[np.argsort(-conf[accept], kind="stable")]
    agreement = np.full(len(accept), np.nan, dtype=np.float32)
    if neighbours is not None and len(accept):
        sims, idx = neighbours
        voters = labels if vote_labels is None else vote_labels
        votes = neighbour_votes(idx[accept], sims[accept], voters, num_classes=k)
        total = votes.sum(1)
        agree = votes[np.arange(len(accept)), pred[accept]]
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN: no labeled neighbour voted
            agreement = np.where(total > 0, agree / total, np.nan).astype(np.float32)
    return dict(rows=accept, predicted=pred[accept], confidence=conf[accept], agreement=agreement,
                global_threshold=global_t, class_thresholds=class_t)
