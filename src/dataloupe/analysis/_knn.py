"""Nearest neighbours on L2-normalised embeddings (cosine similarity), shared by the findings.

Exact search is a brute-force inner product (faiss ``IndexFlatIP``, BLAS in blocks); above
``exact_limit`` rows an inverted-file index (``IndexIVFFlat``) keeps 1,000,000 rows within
minutes. Every kNN finding reuses one graph computed here.
"""

from __future__ import annotations

import math

import numpy as np

EXACT_LIMIT = 200_000  # rows; beyond this an IVF index is used (approximate)
KNN_DIM = 256  # dims the kNN findings use when the embeddings are larger than REDUCE_ABOVE
REDUCE_ABOVE = 1 << 28  # N * D values (ImageNet's 1.28M x 2048 is 2.6e9): above, PCA to KNN_DIM first


def pca_basis(sample: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA of ``sample (M, D)``: ``(mean (D,), components (D, dim))`` float32, largest variance first.

    Fitted on a sample (the covariance is ``D x D``), applied to every row in chunks with
    ``(x - mean) @ components``, so 1.28M x 2048 never needs a float32 copy of the whole set.

    Example:
        >>> m, c = pca_basis(np.random.default_rng(0).normal(size=(100, 8)), 3)
        >>> c.shape
        (8, 3)
    """
    x = np.asarray(sample, dtype=np.float64)
    mean = x.mean(0)
    cov = np.cov(x - mean, rowvar=False)
    vals, vecs = np.linalg.eigh(cov)
    comps = vecs[:, np.argsort(vals)[::-1][:dim]]
    return mean.astype(np.float32), np.ascontiguousarray(comps, dtype=np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32 `(N, D)` (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms)


def _index(base: np.ndarray, exact_limit: int):
    import faiss

    n, d = base.shape
    if n <= exact_limit:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * math.sqrt(n))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train = base[rng.choice(n, size=min(n, 40 * nlist), replace=False)]
        index.train(train)
        index.nprobe = 8
    index.add(base)
    return index


def knn(
    embeddings: np.ndarray,
    *,
    k: int,
    queries: np.ndarray | None = None,
    exact_limit: int = EXACT_LIMIT,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k nearest neighbours.

    Args:
        embeddings: `(N, D)` base vectors (normalised here).
        k: neighbours per query.
        queries: `(M, D)` query vectors; None = the base itself, in which case each row's
            own entry is removed (a row is never its own neighbour; exact copies still are).
        exact_limit: base size above which an approximate IVF index is used.

    Returns:
        `(sims (M, k), idx (M, k))`, most similar first; float32 cosine similarities and
        int64 row indices into ``embeddings`` (-1 where fewer than k exist).

    Example:
        >>> x = np.eye(3, dtype=np.float32)
        >>> knn(x, k=1)[1].shape
        (3, 1)
    """
    base = l2_normalize(embeddings)
    self_query = queries is None
    q = base if self_query else l2_normalize(queries)
    n = base.shape[0]
    if n == 0 or q.shape[0] == 0:
        return np.zeros((q.shape[0], k), np.float32), np.full((q.shape[0], k), -1, np.int64)
    index = _index(base, exact_limit)
    kk = min(k + 1 if self_query else k, n)
    sims, idx = index.search(q, kk)
    if self_query:
        sims, idx = _drop_self(sims, idx)
    sims, idx = sims[:, :k], idx[:, :k]
    if idx.shape[1] < k:  # tiny base: pad
        pad = k - idx.shape[1]
        sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
    return sims.astype(np.float32), idx.astype(np.int64)


def _drop_self(sims: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index (or its last column when it was not returned)."""
    rows = np.arange(idx.shape[0])[:, None]
    is_self = idx == rows
    # rows where self was not found (ties / IVF misses): drop the last column instead
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    m = idx.shape[1] - 1
    return sims[keep].reshape(-1, m), idx[keep].reshape(-1, m)


def neighbour_votes(nbr_idx: np.ndarray, nbr_sims: np.ndarray, vote_labels: np.ndarray, *,
                    num_classes: int) -> np.ndarray:
    """The weighted neighbour vote every finding shares: `(M, K)` summed similarity per class.

    Each neighbour votes for its label with its cosine similarity clipped at 0; missing
    neighbours (index -1) and unlabeled voters (label -1) do not vote.

    Args:
        nbr_idx: `(M, k)` neighbour indices into the voters (-1 = none).
        nbr_sims: `(M, k)` cosine similarities.
        vote_labels: `(N,)` int class indices of the voters, -1 = no vote.
        num_classes: K.

    Example:
        >>> neighbour_votes(np.array([[0, 1, -1]]), np.array([[0.5, 0.25, 1.0]]), np.array([1, -1]),
        ...                 num_classes=2).tolist()
        [[0.0, 0.5]]
    """
    nbr_idx = np.asarray(nbr_idx)
    lab = np.where(nbr_idx >= 0, np.asarray(vote_labels)[np.clip(nbr_idx, 0, None)], -1)
    w = np.where(lab >= 0, np.clip(nbr_sims, 0.0, None), 0.0)
    votes = np.zeros((len(nbr_idx), num_classes))
    rows = np.repeat(np.arange(len(nbr_idx)), nbr_idx.shape[1] if nbr_idx.ndim == 2 else 0)
    ok = lab.ravel() >= 0
    np.add.at(votes, (rows[ok], lab.ravel()[ok]), w.ravel()[ok])
    return votes
