"""Taxonomy of validation errors, top-1/top-5, cleaned and ReaL accuracy.

Each misclassified validation sample gets the first category that applies:

1. ``label_error``: the label-issue detector flags it (its label, not the model, is wrong);
2. ``ambiguous``: the given label is the model's runner-up and its probability is at
   least half the top one (the two classes are both plausible readings of the image);
3. ``confusable_pair``: its (label, predicted) pair is over-represented: a one-sided
   binomial test at the conventional 5% level rejects that the true class's errors
   spread uniformly over the other K-1 classes;
4. ``model_error``: everything else.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dataloupe.project import DataloupeError

CATEGORIES = ("label_error", "ambiguous", "confusable_pair", "model_error")


def load_real_labels(path: str | Path, *, num_samples: int, num_classes: int) -> list[list[int]]:
    """Read a ReaL ``real.json``: one list of valid class indices per validation image.

    Raises:
        DataloupeError: unreadable, not a list of lists of ints in [0, K), or a length
            different from the number of validation samples.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataloupeError(f"cannot read real-labels file {path}: {e}") from None
    ok = isinstance(data, list) and all(
        isinstance(v, list) and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num_classes for c in v)
        for v in data
    )
    if not ok:
        raise DataloupeError(
            f"real-labels file {path} must be a JSON list with one list of class indices "
            f"(ints in [0, {num_classes})) per validation image"
        )
    if len(data) != num_samples:
        raise DataloupeError(
            f"real-labels file {path} has {len(data)} entries, the validation table has {num_samples} samples"
        )
    return data


def topk_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the k most probable classes."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def real_accuracy(predicted: np.ndarray, real: list[list[int]]) -> tuple[float, int]:
    """ReaL accuracy over images with at least one valid label, and how many those are."""
    scored = [(p in set(v)) for p, v in zip(predicted.tolist(), real) if v]
    return (float(np.mean(scored)) if scored else float("nan")), len(scored)


def confusable_pairs(labels: np.ndarray, predicted: np.ndarray, *, num_classes: int, alpha: float = 0.05) -> set[tuple[int, int]]:
    """(true, predicted) pairs whose error count is significantly above a uniform spread."""
    from scipy.stats import binomtest

    wrong = labels != predicted
    pairs: set[tuple[int, int]] = set()
    if num_classes < 3:
        return pairs  # one possible wrong class: nothing to be over-represented against
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels[wrong], predicted[wrong]), 1)
    for t, p in zip(*np.nonzero(cm)):
        n_t = int(cm[t].sum())
        test = binomtest(int(cm[t, p]), n_t, 1.0 / (num_classes - 1), alternative="greater")
        if test.pvalue < alpha:
            pairs.add((int(t), int(p)))
    return pairs


def error_taxonomy(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    label_issue_mask: np.ndarray | None = None,
    real_labels: list[list[int]] | None = None,
) -> dict:
    """Categorise the errors of labeled validation samples.

    Args:
        labels: `(N,)` given labels (all defined).
        probs: `(N, K)` model probabilities.
        label_issue_mask: `(N,)` bool, suspected label errors (e.g. ``find_label_issues``).
        real_labels: ReaL valid-label lists, one per sample, or None.

    Returns:
        dict with ``top1``, ``top5`` (None when K < 5), ``top1_without_label_issues``,
        ``real_top1`` (when given), ``errors``, and ``categories``: name -> row indices.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.45, 0.55], [0.2, 0.8]])
        >>> error_taxonomy(np.array([0, 0, 1]), p)["categories"]["ambiguous"]
        [1]
    """
    n, k = probs.shape
    pred = probs.argmax(1)
    wrong = pred != labels
    issues = np.zeros(n, bool) if label_issue_mask is None else label_issue_mask.astype(bool)
    p_label = probs[np.arange(n), labels]
    p_top = probs[np.arange(n), pred]
    runner_up = np.argsort(-probs, axis=1)[:, 1] if k > 1 else pred
    ambiguous = (runner_up == labels) & (p_label >= p_top / 2)
    pairs = confusable_pairs(labels, pred, num_classes=k)
    confusable = np.array([(int(a), int(b)) in pairs for a, b in zip(labels, pred)], dtype=bool)
    left = wrong.copy()
    categories: dict[str, list[int]] = {}
    for name, m in (("label_error", issues), ("ambiguous", ambiguous), ("confusable_pair", confusable)):
        hit = left & m
        categories[name] = np.flatnonzero(hit).tolist()
        left &= ~hit
    categories["model_error"] = np.flatnonzero(left).tolist()
    keep = ~issues
    out = dict(
        top1=float((~wrong).mean()) if n else float("nan"),
        top5=topk_accuracy(labels, probs, 5) if k >= 5 else None,
        top1_without_label_issues=float((~wrong[keep]).mean()) if keep.any() else float("nan"),
        set_aside=int(issues.sum()),
        errors=int(wrong.sum()),
        confusable_pairs=sorted(pairs),
        categories=categories,
    )
    if real_labels is not None:
        if len(real_labels) != n:
            raise DataloupeError(f"real labels have {len(real_labels)} entries, expected {n}")
        out["real_top1"], out["real_scored"] = real_accuracy(pred, real_labels)
    return out
