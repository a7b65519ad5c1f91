"""Pseudo-labels for undefined rows, with thresholds calibrated on labeled rows.

The thresholds come from the labeled rows' (out-of-sample) predictions, never from
validation labels: the global threshold is the lowest confidence t such that, among
labeled rows predicted with confidence >= t, at least ``target_precision`` are correct;
each class gets the same rule restricted to rows predicted as that class (a class that
never reaches the target gets no pseudo-labels). An undefined row is pseudo-labeled when
its confidence clears its predicted class's threshold. Labeled rows suspected of label
errors should be left out of the calibration (``calibration_mask``): with 10% wrong labels
no threshold could show 95% precision against them.
"""

from __future__ import annotations

import numpy as np

from dataloupe.analysis._label_issues import knn_label_probs


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
        ``predicted``, ``confidence``, ``agreement`` (fraction of labeled neighbours'
        weighted votes for the predicted class; NaN without neighbours) — all aligned
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
        votes = knn_label_probs(labels if vote_labels is None else vote_labels, idx[accept], sims[accept], num_classes=k)
        agreement = votes[np.arange(len(accept)), pred[accept]]
    return dict(rows=accept, predicted=pred[accept], confidence=conf[accept], agreement=agreement,
                global_threshold=global_t, class_thresholds=class_t)
