"""Label issues: confident learning + area under the margin + embedding-neighbour votes.

How the ranking and the cut-off are chosen (no per-dataset constants):

1. **Three views of how plausible each given label is**, none of which has fitted the
   sample's own label on that sample:
   * ``p_model``: out-of-sample class probabilities (cross-fitted, ``crossfit_probs``);
   * ``p_knn``: the similarity-weighted labels of the sample's k nearest embedding
     neighbours (the sample itself excluded), smoothed by one pseudo-vote of the class
     prior;
   * AUM (Pleiss et al. 2020): the mean over training epochs of the given label's logit
     minus the largest other logit; mislabeled samples are learned late, so it stays low.
2. **Ensemble probabilities** ``p = mean(p_model, p_knn)``: averaging two imperfectly
   correlated classifiers is more accurate than either; no weights are tuned.
3. **Three votes, each with the natural cut-off of its own signal**:
   * confident learning on ``p`` (``cleanlab.filter.find_label_issues``: per-class
     thresholds = each class's mean self-confidence, pruned by the estimated noise rate);
   * the neighbours' weighted majority class is not the given label;
   * AUM < 0: on average during training the given label was not the top logit.
   A sample is flagged when a strict majority of the available votes say so (2 of 3;
   both when AUM is missing; the one vote when only probabilities are given). Majority
   voting of independent-ish detectors keeps the recall of the loose ones (AUM,
   neighbours) and the precision of agreeing evidence.
4. **Ranking score** in [0, 1] = (votes + mean suspicion percentile) / (available votes
   + 1), where the percentiles rank the ensemble's self-confidence ``p[y]`` and AUM among
   the labeled samples (ranks need no scale matching). Flagged samples therefore rank above
   unflagged ones, and within a vote count the continuous evidence orders them.
5. ``suggested_label``: the ensemble's most probable class other than the given one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataloupe.analysis._knn import knn


@dataclass
class LabelIssues:
    """Result of ``find_label_issues`` over N labeled samples.

    Attributes:
        mask: `(N,)` bool, the flagged samples.
        scores: `(N,)` float in [0, 1], higher = more likely mislabeled.
        suggested: `(N,)` int, the most likely other class.
        num_estimated: number flagged (the majority-vote estimate of label errors).
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
    lab = np.where(nbr_idx >= 0, vote_labels[np.clip(nbr_idx, 0, None)], -1)
    w = np.where(lab >= 0, np.clip(nbr_sims, 0.0, None), 0.0)
    votes = np.zeros((len(nbr_idx), num_classes))
    rows = np.repeat(np.arange(len(nbr_idx)), nbr_idx.shape[1])
    ok = lab.ravel() >= 0
    np.add.at(votes, (rows[ok], lab.ravel()[ok]), w.ravel()[ok])
    # normalise to a distribution, then one pseudo-vote of the prior (Laplace-style smoothing)
    total = votes.sum(1, keepdims=True)
    votes = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
    return ((votes * nbr_idx.shape[1] + prior) / (nbr_idx.shape[1] + 1)).astype(np.float32)


def _suspicion_rank(x: np.ndarray) -> np.ndarray:
    """Percentile in (0, 1] of ``-x``: the smallest x gets the highest rank."""
    from scipy.stats import rankdata

    return rankdata(-np.asarray(x, dtype=np.float64)) / len(x)


def label_issue_scores(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    knn_probs: np.ndarray | None = None,
    aum: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Votes and ranking score of each sample (module docstring, steps 2-4).

    Args:
        labels: `(N,)` given labels (all defined).
        probs: `(N, K)` out-of-sample probabilities.
        knn_probs: `(N, K)` neighbour label distribution (``knn_label_probs``) or None.
        aum: `(N,)` area under the margin or None; NaN entries abstain.

    Returns:
        `(scores (N,) in [0, 1], flagged (N,) bool, ensemble probabilities (N, K))`.
    """
    from cleanlab.filter import find_label_issues as confident_learning

    n = len(labels)
    ens = probs if knn_probs is None else (probs + knn_probs) / 2
    ens = ens / ens.sum(1, keepdims=True)
    self_conf = ens[np.arange(n), labels]
    ranks = [_suspicion_rank(self_conf)]
    # n_jobs=1: cleanlab would fork worker processes, and Lance (imported by the CLI) is not fork-safe
    votes = [confident_learning(labels, ens, n_jobs=1).astype(np.float64)]
    voters = np.ones(n)
    if knn_probs is not None:
        votes.append((knn_probs.argmax(1) != labels).astype(np.float64))
        voters += 1
    if aum is not None and np.isfinite(aum).any():
        finite = np.isfinite(aum)
        votes.append(np.where(finite, aum < 0, 0.0))
        voters += finite
        ranks.append(_suspicion_rank(np.where(finite, aum, np.nanmedian(aum))))
    count = np.sum(votes, axis=0)
    flagged = count > voters / 2
    scores = (count + np.mean(ranks, axis=0)) / (voters + 1)
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
        >>> d = load_digits(); y = d.target.copy(); y[:50] = (y[:50] + 1) % 10
        >>> from dataloupe.analysis import crossfit_probs
        >>> p = crossfit_probs(d.data, y, num_classes=10, folds=3)
        >>> r = find_label_issues(y, p, embeddings=d.data)
        >>> bool(r.mask[:50].mean() > 0.5 > r.mask[50:].mean())
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
