"""kNN findings: outliers, near-duplicates within a table, leakage between two tables.

All take the cached cosine kNN graph (see ``_knn.knn``) or embeddings, and return plain
arrays. Cut-offs come from the data's own distance distribution, with textbook constants:

* outliers: mean distance to the k nearest neighbours above Tukey's fence, Q3 + 1.5 IQR;
* near-duplicates: a nearest-neighbour distance that is itself an outlier on the low
  side: log distance with a modified z-score below -3.5 (Iglewicz & Hoaglin's rule;
  log because distances are positive and skewed). A fixed cosine threshold would not
  travel: in a trained CNN's embedding a third of all nearest neighbours are above 0.97.
  Leakage between tables uses the training table's threshold. Files with the same content
  hash are exact duplicates whatever their embeddings.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from dataloupe.analysis._knn import knn

MODIFIED_Z = 3.5  # Iglewicz & Hoaglin's outlier cut-off on the modified z-score


def duplicate_threshold(nbr_sims: np.ndarray) -> float:
    """Cosine similarity above which a nearest neighbour is anomalously close (a near-duplicate).

    Args:
        nbr_sims: `(N, k)` kNN similarities (column 0 = nearest neighbour).
    """
    sims = nbr_sims[:, 0][np.isfinite(nbr_sims[:, 0])]
    if len(sims) < 3:
        return 1.0
    log_d = np.log(np.clip(1.0 - sims.astype(np.float64), 1e-12, None))
    med = np.median(log_d)
    mad = 1.4826 * np.median(np.abs(log_d - med))
    return float(1.0 - np.exp(med - MODIFIED_Z * mad))


def outlier_scores(nbr_sims: np.ndarray) -> np.ndarray:
    """Mean cosine distance to the k nearest neighbours, `(N,)`; higher = more isolated.

    Args:
        nbr_sims: `(N, k)` cosine similarities to the k nearest neighbours.
    """
    sims = np.where(np.isfinite(nbr_sims), nbr_sims, -1.0)
    return (1.0 - sims.mean(1)).astype(np.float32)


def outlier_mask(scores: np.ndarray) -> np.ndarray:
    """`(N,)` bool: scores above Tukey's upper fence Q3 + 1.5 (Q3 - Q1)."""
    if len(scores) == 0:
        return np.zeros(0, dtype=bool)
    q1, q3 = np.percentile(scores, [25, 75])
    return scores > q3 + 1.5 * (q3 - q1)


def content_hashes(paths: list[str | Path | None]) -> np.ndarray:
    """SHA-1 of each file's bytes, `(N,)` str (empty string for unreadable files and None)."""
    out = []
    for p in paths:
        if p is None:
            out.append("")
            continue
        try:
            out.append(hashlib.sha1(Path(p).read_bytes()).hexdigest())
        except OSError:
            out.append("")
    return np.array(out, dtype=object)


def near_duplicate_pairs(
    nbr_sims: np.ndarray,
    nbr_idx: np.ndarray,
    *,
    threshold: float | None = None,
    hashes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) within one set that are near or exact duplicates.

    Args:
        nbr_sims, nbr_idx: `(N, k)` the set's kNN graph with itself.
        threshold: cosine similarity cut-off; None = ``duplicate_threshold(nbr_sims)``.
        hashes: `(N,)` content hashes; equal non-empty hashes are exact duplicates
            whether or not they are kNN neighbours.

    Returns:
        `(pairs (P, 2) int64, similarity (P,) float32, exact (P,) bool)`, most similar first.
    """
    n = len(nbr_idx)
    if threshold is None:
        threshold = duplicate_threshold(nbr_sims)
    rows = np.repeat(np.arange(n), nbr_idx.shape[1])
    cols = nbr_idx.ravel()
    sims = nbr_sims.ravel()
    keep = (cols >= 0) & (sims >= threshold)
    a, b = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    found = {(int(i), int(j)): float(s) for i, j, s in zip(a, b, sims[keep]) if i != j}
    exact: set[tuple[int, int]] = set()
    if hashes is not None:
        groups: dict[str, list[int]] = {}
        for i, h in enumerate(hashes):
            if h:
                groups.setdefault(h, []).append(i)
        for members in groups.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    exact.add((members[x], members[y]))
                    found.setdefault((members[x], members[y]), 1.0)
    keys = sorted(found, key=lambda p: (-found[p], p))
    pairs = np.array(keys, dtype=np.int64).reshape(-1, 2)
    sim = np.array([found[p] for p in keys], dtype=np.float32)
    return pairs, sim, np.array([p in exact for p in keys], dtype=bool)


def leakage_pairs(
    query_emb: np.ndarray,
    base_emb: np.ndarray,
    *,
    threshold: float,
    query_hashes: np.ndarray | None = None,
    base_hashes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query rows (e.g. val) whose nearest base row (e.g. train) is a (near-)duplicate.

    Args:
        threshold: cosine similarity cut-off (e.g. ``duplicate_threshold`` of the base set).

    Returns:
        `(pairs (P, 2) int64 [query_row, base_row], similarity (P,), exact (P,) bool)`.
    """
    sims, idx = knn(base_emb, k=1, queries=query_emb)
    found = {int(q): (int(idx[q, 0]), float(sims[q, 0])) for q in np.flatnonzero(sims[:, 0] >= threshold)}
    exact_q: dict[int, int] = {}
    if query_hashes is not None and base_hashes is not None:
        where = {h: i for i, h in enumerate(base_hashes) if h}
        exact_q = {q: where[h] for q, h in enumerate(query_hashes) if h and h in where}
        for q, b in exact_q.items():
            found[q] = (b, 1.0)
    keys = sorted(found, key=lambda q: (-found[q][1], q))
    pairs = np.array([(q, found[q][0]) for q in keys], dtype=np.int64).reshape(-1, 2)
    sim = np.array([found[q][1] for q in keys], dtype=np.float32)
    return pairs, sim, np.array([q in exact_q for q in keys], dtype=bool)
