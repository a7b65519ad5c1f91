"""kNN findings: outliers, near-duplicates within a table, leakage between two tables.

All take the cached cosine kNN graph (see ``_knn.knn``) or embeddings, and return plain
arrays. Cut-offs: outliers use Tukey's fence on the kNN distance (Q3 + 1.5 IQR, the
textbook rule, independent of the dataset's scale); duplicates use a cosine similarity
threshold (default 0.97, an option) plus exact duplicates by content hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from dataloupe.analysis._knn import knn

DUPLICATE_SIMILARITY = 0.97  # cosine similarity at or above which two images are near-duplicates


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


def content_hashes(paths: list[str | Path]) -> np.ndarray:
    """SHA-1 of each file's bytes, `(N,)` str (empty string for unreadable files)."""
    out = []
    for p in paths:
        try:
            out.append(hashlib.sha1(Path(p).read_bytes()).hexdigest())
        except OSError:
            out.append("")
    return np.array(out, dtype=object)


def near_duplicate_pairs(
    nbr_sims: np.ndarray,
    nbr_idx: np.ndarray,
    *,
    threshold: float = DUPLICATE_SIMILARITY,
    hashes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) within one set that are near or exact duplicates.

    Args:
        nbr_sims, nbr_idx: `(N, k)` the set's kNN graph with itself.
        threshold: cosine similarity cut-off.
        hashes: `(N,)` content hashes; equal non-empty hashes are exact duplicates
            whether or not they are kNN neighbours.

    Returns:
        `(pairs (P, 2) int64, similarity (P,) float32, exact (P,) bool)`, most similar first.
    """
    n = len(nbr_idx)
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
    threshold: float = DUPLICATE_SIMILARITY,
    query_hashes: np.ndarray | None = None,
    base_hashes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query rows (e.g. val) whose nearest base row (e.g. train) is a (near-)duplicate.

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
