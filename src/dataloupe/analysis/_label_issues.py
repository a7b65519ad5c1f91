"""Label issues: how many labels are wrong, and which ones, from three views of each sample.

How the ranking and the cut-off are chosen (no per-dataset constants):

1. **Three views of how plausible each given label is**:
   * ``p_model``: out-of-sample class probabilities (cross-fitted, ``crossfit_probs``;
     ``analyze`` cross-fits the training table's rows for this finding when the run's
     probabilities are the model's own, which has fitted the very labels in question);
   * ``p_knn``: the similarity-weighted labels of the sample's k nearest embedding
     neighbours (the sample itself excluded), smoothed by one pseudo-vote of the class
     prior;
   * AUM (Pleiss et al. 2020): the mean over training epochs of the given label's logit
     minus the largest other logit; mislabeled samples are learned late, so it stays low.
2. **Ensemble probabilities** ``p = mean(p_model, p_knn)``: averaging two imperfectly
   correlated classifiers is more accurate than either; no weights are tuned.
3. **Ranking score** in (0, 1] = the mean of two suspicion percentiles among the labeled
   samples: of the ensemble's self-confidence ``p[y]`` and of AUM (ranks need no scale
   matching; without AUM, the first alone).
4. **How many to flag** (``estimate_num_label_errors``): take the samples labeled i that
   the ensemble places in another class j. If such a label is wrong, the sample is a j
   like the others, and a model that has not fitted its label gives it the probability
   for i that j's members get (low after a random slip; higher when j is often mislabeled
   i, which the model then learns). So half the wrong ones score below the median of j's
   members' probability for i, while a correct but ambiguous i, raised by what makes it
   an i, rarely does. Twice the count below that median, per pair (i, j) and clipped to
   the pair's size, summed, estimates the number of wrong labels (Storey's estimate of the
   share of nulls with lambda = 1/2, the wrong labels playing the nulls). The top that
   many by the ranking score are flagged.
5. ``suggested_label``: the ensemble's most probable class other than the given one.

Why not a vote of per-signal cut-offs (confident learning's per-class thresholds, the
neighbours' majority, AUM < 0), as before: each of them also fires on samples that are
merely hard (a shirt the model takes for a T-shirt: its given label is the model's second
choice, not an implausible one), so on a model of modest accuracy they flag far more
samples than there are wrong labels, and so does confident learning's own count.
``bench/label_noise.py`` measures this against cleanlab (bench/RESULTS.md). The estimate
errs low when ``p_model`` has fitted the labels (hence cross-fitting) and misses wrong
labels the ensemble itself agrees with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataloupe.analysis._knn import knn, neighbour_votes


@dataclass
class LabelIssues:
    """Result of ``find_label_issues`` over N labeled samples.

    Attributes:
        mask: `(N,)` bool, the flagged samples.
        scores: `(N,)` float in [0, 1], higher = more likely mislabeled.
        suggested: `(N,)` int, the most likely other class.
        num_estimated: number flagged (the estimated number of wrong labels).
        ensemble_probs: `(N, K)` the combined class probabilities.
    """

    mask: np.ndarray
    scores: np.ndarray
    suggested: np.ndarray
    num_estimated: int
    ensemble_probs: np.ndarray


def knn_label_probs(
    labels: np.ndarray,
    nbr_idx: np.ndarray,
    nbr_sims: np.ndarray,
    *,
    num_classes: int,
    nbr_labels: np.ndarray | None = None,
) -> np.ndarray:
    """Class distribution of each sample's neighbours, `(M, K)`.

    Args:
        labels: `(N,)` labels of the reference set (used for the class prior).
        nbr_idx: `(M, k)` neighbour indices into the reference set (-1 = none).
        nbr_sims: `(M, k)` cosine similarities (weights, clipped at 0).
        num_classes: K.
        nbr_labels: `(N,)` labels to vote with (default ``labels``); -1 votes are ignored.

    Example:
        >>> knn_label_probs(np.array([0, 0, 1]), np.array([[1], [0], [0]]),
        ...                 np.ones((3, 1)), num_classes=2).astype(float).round(2).tolist()
        [[0.83, 0.17], [0.83, 0.17], [0.83, 0.17]]
    """
    vote_labels = labels if nbr_labels is None else nbr_labels
    known = vote_labels[vote_labels >= 0]
    prior = np.bincount(known, minlength=num_classes).astype(np.float64)
    prior = prior / max(prior.sum(), 1.0)
    votes = neighbour_votes(nbr_idx, nbr_sims, vote_labels, num_classes=num_classes)
    # normalise to a distribution, then one pseudo-vote of the prior (Laplace-style smoothing)
    total = votes.sum(1, keepdims=True)
    votes = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
    return ((votes * nbr_idx.shape[1] + prior) / (nbr_idx.shape[1] + 1)).astype(np.float32)


def _suspicion_rank(x: np.ndarray) -> np.ndarray:
    """Percentile in (0, 1] of ``-x``: the smallest x gets the highest rank."""
    from scipy.stats import rankdata

    return rankdata(-np.asarray(x, dtype=np.float64)) / len(x)


def estimate_num_label_errors(labels: np.ndarray, probs: np.ndarray) -> int:
    """Estimated number of wrong labels among N samples (module docstring, step 4).

    Args:
        labels: `(N,)` given labels, ints in [0, K).
        probs: `(N, K)` out-of-sample probabilities (in-sample ones make it err low).

    Example:
        >>> from sklearn.datasets import load_digits
        >>> from dataloupe.analysis import crossfit_probs
        >>> d = load_digits(); rng = np.random.default_rng(0); y = d.target.copy()
        >>> wrong = rng.choice(len(y), 180, replace=False)  # 10% flipped to another class
        >>> y[wrong] = (y[wrong] + rng.integers(1, 10, 180)) % 10
        >>> p = crossfit_probs(d.data, y, num_classes=10, folds=5)
        >>> 150 < estimate_num_label_errors(y, p) < 210
        True
    """
    labels = np.asarray(labels, dtype=np.int64)
    n, k = probs.shape
    if n == 0 or k < 2:
        return 0
    given = probs[np.arange(n), labels]
    placed = probs.argmax(1)
    order = np.argsort(placed, kind="stable")
    total = 0
    for group in np.split(order, np.flatnonzero(np.diff(placed[order])) + 1):  # rows placed in one class j
        j = placed[group[0]]
        members, others = group[labels[group] == j], group[labels[group] != j]
        if not len(members) or not len(others):
            continue
        typical = np.median(probs[members], axis=0)  # (K,) the members' median probability of each class
        lab = labels[others]
        below = np.bincount(lab[given[others] < typical[lab]], minlength=k)
        total += int(np.minimum(2 * below, np.bincount(lab, minlength=k)).sum())  # pair (i, j): at most its size
    return total


def label_issue_scores(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    knn_probs: np.ndarray | None = None,
    aum: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranking score, flags and ensemble probabilities (module docstring, steps 2-4).

    Args:
        labels: `(N,)` given labels (all defined).
        probs: `(N, K)` out-of-sample probabilities.
        knn_probs: `(N, K)` neighbour label distribution (``knn_label_probs``) or None.
        aum: `(N,)` area under the margin or None; NaN entries take the median's rank.

    Returns:
        `(scores (N,) in (0, 1], flagged (N,) bool, ensemble probabilities (N, K))`; the
        flagged samples are the ``estimate_num_label_errors`` highest scores.
    """
    n = len(labels)
    ens = probs if knn_probs is None else (probs + knn_probs) / 2
    ens = ens / ens.sum(1, keepdims=True)
    self_conf = ens[np.arange(n), labels]
    ranks = [_suspicion_rank(self_conf)]
    if aum is not None and np.isfinite(aum).any():
        finite = np.isfinite(aum)
        ranks.append(_suspicion_rank(np.where(finite, aum, np.nanmedian(aum))))
    scores = np.mean(ranks, axis=0)
    order = np.lexsort((self_conf, -scores))  # highest score first; ties: least self-confident
    flagged = np.zeros(n, dtype=bool)
    flagged[order[: estimate_num_label_errors(labels, ens)]] = True
    return scores, flagged, ens.astype(np.float32)


def find_label_issues(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    embeddings: np.ndarray | None = None,
    aum: np.ndarray | None = None,
    k: int = 10,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
    nbr_labels: np.ndarray | None = None,
) -> LabelIssues:
    """Flag likely label errors among labeled samples (see the module docstring).

    Args:
        labels: `(N,)` given labels, ints in [0, K).
        probs: `(N, K)` out-of-sample probabilities.
        embeddings: `(N, D)` embeddings for neighbour votes, or None.
        aum: `(N,)` area under the margin, or None.
        k: neighbours per sample.
        neighbours: precomputed `(sims (N, k), idx (N, k))` instead of ``embeddings``.
        nbr_labels: labels of the rows ``neighbours`` index into (default ``labels``;
            -1 = undefined, no vote).

    Example:
        >>> from sklearn.datasets import load_digits
        >>> from dataloupe.analysis import crossfit_probs
        >>> d = load_digits(); rng = np.random.default_rng(0); y = d.target.copy()
        >>> wrong = rng.choice(len(y), 90, replace=False)  # 5% labeled one class up
        >>> y[wrong] = (y[wrong] + 1) % 10
        >>> p = crossfit_probs(d.data, y, num_classes=10, folds=3)
        >>> r = find_label_issues(y, p, embeddings=d.data)
        >>> bool(r.mask[wrong].mean() > 0.7 and (r.mask & (y != d.target)).sum() > 0.9 * r.mask.sum())
        True
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n, num_classes = probs.shape
    knn_p = None
    if neighbours is None and embeddings is not None:
        neighbours = knn(embeddings, k=k)
    if neighbours is not None:
        sims, idx = neighbours
        knn_p = knn_label_probs(labels if nbr_labels is None else nbr_labels, idx, sims,
                                num_classes=num_classes).astype(np.float64)
    if n == 0:
        empty = np.zeros(0)
        return LabelIssues(empty.astype(bool), empty, empty.astype(np.int64), 0, probs)
    scores, mask, ens = label_issue_scores(labels, probs, knn_probs=knn_p, aum=aum)
    other = ens.copy()
    other[np.arange(n), labels] = -1.0
    return LabelIssues(mask, scores, other.argmax(1), int(mask.sum()), ens)
