"""Out-of-sample class probabilities by K-fold cross-fitting a linear head on embeddings.

A model's probabilities for the samples it was trained on are over-confident in their
given labels (it has partly memorised them), which hides label errors. Confident learning
needs out-of-sample probabilities; refitting the network K times is costly, so we refit a
multinomial logistic regression on the network's embeddings, K times, each time
predicting the held-out fold.
"""

from __future__ import annotations

import warnings

import numpy as np

from dataloupe.project import DataloupeError


def crossfit_probs(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    folds: int = 5,
    seed: int = 0,
    max_iter: int = 200,
    max_fit_rows: int | None = None,
) -> np.ndarray:
    """Out-of-sample probabilities `(N, K)` from K-fold logistic regression on embeddings.

    Args:
        embeddings: `(N, D)` features of labeled samples.
        labels: `(N,)` int class indices in ``[0, num_classes)``.
        num_classes: K.
        folds: number of folds (>= 2).
        seed: fold assignment seed (stratified).
        max_iter: L-BFGS iterations per fit (a budget: a fit that has not converged by
            then is used as it is, without a warning).
        max_fit_rows: fit each fold's head on at most this many rows, a stratified random
            sample of the other folds (bounds the cost on large tables; every row is still
            predicted out of sample). None: all of them.

    Raises:
        DataloupeError: fewer than 2 folds, ``max_fit_rows`` below K, or a class has
            fewer labeled samples than ``folds`` (some fold's training part would miss it).

    Example:
        >>> from sklearn.datasets import load_digits
        >>> d = load_digits()
        >>> crossfit_probs(d.data, d.target, num_classes=10, folds=3).shape
        (1797, 10)
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, train_test_split
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels, dtype=np.int64)
    if folds < 2:
        raise DataloupeError(f"--folds must be at least 2, got {folds}")
    if max_fit_rows is not None and max_fit_rows < num_classes:
        raise DataloupeError(f"max_fit_rows {max_fit_rows} is below the number of classes {num_classes}")
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    if (counts[present] < folds).any():
        few = {int(c): int(counts[c]) for c in np.flatnonzero(present & (counts < folds))}
        raise DataloupeError(
            f"classes missing from a fold: class index -> labeled count {few} is below "
            f"--folds {folds}; use fewer folds or label more samples"
        )
    x = StandardScaler().fit_transform(np.asarray(embeddings, dtype=np.float32))
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_idx, held_idx in splitter.split(x, labels):
        if max_fit_rows is not None and len(fit_idx) > max_fit_rows:
            fit_idx, _ = train_test_split(fit_idx, train_size=max_fit_rows, random_state=seed,
                                          stratify=labels[fit_idx])
        clf = LogisticRegression(max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x[fit_idx], labels[fit_idx])
        out[np.ix_(held_idx, clf.classes_)] = clf.predict_proba(x[held_idx])
    return out
