"""Nearest neighbours on L2-normalised embeddings (cosine similarity), shared by the findings.

Exact search is a brute-force inner product (faiss ``IndexFlatIP``, BLAS in blocks); above
``exact_limit`` rows the search is approximate and cell-blocked (``cell_knn``): the rows are
split into ~sqrt(N) k-means cells, and each cell's queries are compared, by one matrix
product, with the rows of the ``CELL_PROBES`` cells nearest to that cell. Every kNN
finding reuses one graph computed here.
"""

from __future__ import annotations

import math

import numpy as np

EXACT_LIMIT = 200_000  # rows; beyond this the cell-blocked search is used (approximate)
CELL_PROBES = 8  # cells whose rows each cell's queries are compared with (its own included)
CELL_SELECT_GROUP = 16  # columns per group in the two-stage top-k selection (``_top_k``)
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


def _top_k(scores_t: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest scores of each query, largest first: `(values (M, k), candidates (M, k))`.

    ``scores_t`` is `(C, M)`: candidates by queries. Written by hand because
    ``np.argpartition`` over all C candidates costs as much as the matrix product that made
    the scores. Two stages instead: the maximum of each group of ``CELL_SELECT_GROUP``
    candidates (an element-wise maximum of contiguous rows, fast), the k groups with the
    largest maxima (they hold every top-k score: a group holding one has a maximum at least
    the k-th score, and fewer than k groups exceed it), then the top k of those k groups'
    candidates. Exact, ties aside.
    """
    c, m = scores_t.shape
    k = min(k, c)
    g = CELL_SELECT_GROUP
    if c > 4 * g * k:
        pad = (-c) % g
        padded = np.pad(scores_t, ((0, pad), (0, 0)), constant_values=-np.inf) if pad else scores_t
        groups = np.ascontiguousarray(padded.reshape(-1, g, m).max(1).T)  # (M, C / g)
        top_groups = np.argpartition(-groups, k - 1, axis=1)[:, :k]
        cols = (top_groups[:, :, None] * g + np.arange(g)).reshape(m, -1)
        vals = padded[cols, np.arange(m)[:, None]]
    else:
        vals = np.ascontiguousarray(scores_t.T)
        cols = np.broadcast_to(np.arange(c), vals.shape)
    part = np.argpartition(-vals, k - 1, axis=1)[:, :k]
    v = np.take_along_axis(vals, part, 1)
    order = np.argsort(-v, axis=1, kind="stable")
    return np.take_along_axis(v, order, 1), np.take_along_axis(np.take_along_axis(cols, part, 1), order, 1)


def cell_knn(base: np.ndarray, queries: np.ndarray, k: int, *, probes: int = CELL_PROBES, seed: int = 0,
             chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Approximate inner-product kNN of ``queries (M, D)`` in ``base (N, D)`` (unit rows, float32).

    ~sqrt(N) spherical k-means cells; a query belongs to its nearest centroid's cell and is
    compared with every row of the ``probes`` cells whose centroids are nearest to that
    centroid. Written by hand instead of a faiss IVF index, which scans its lists one query
    at a time (1.28M x 256 with nprobe 8: more than 25 CPU-minutes on one core): here each
    cell's queries share one candidate set, so the scores are one BLAS matrix product per
    cell, and the similarities returned are exact for the neighbours found.

    Returns:
        `(sims (M, k), idx (M, k))`, most similar first; -inf / -1 where fewer than k
        candidates exist.
    """
    import faiss

    n, d = base.shape
    cells = max(1, int(math.sqrt(n)))
    probes = min(probes, cells)
    rng = np.random.default_rng(seed)
    km = faiss.Kmeans(d, cells, niter=10, spherical=True, seed=seed, max_points_per_centroid=40)
    km.train(base[rng.choice(n, size=min(n, 40 * cells), replace=False)])
    centroids = faiss.IndexFlatIP(d)
    centroids.add(km.centroids)
    base_cell = centroids.search(base, 1)[1][:, 0]
    query_cell = centroids.search(queries, 1)[1][:, 0] if queries is not base else base_cell
    near = centroids.search(km.centroids, probes)[1]  # each cell's nearest cells, itself first
    by_cell = np.argsort(base_cell, kind="stable")
    start = np.searchsorted(base_cell[by_cell], np.arange(cells + 1))
    sorted_base = base[by_cell]  # each cell's rows contiguous
    q_by_cell = np.argsort(query_cell, kind="stable")
    q_start = np.searchsorted(query_cell[q_by_cell], np.arange(cells + 1))
    sims = np.full((len(queries), k), -np.inf, np.float32)
    idx = np.full((len(queries), k), -1, np.int64)
    for c in range(cells):
        rows = q_by_cell[q_start[c]:q_start[c + 1]]
        if not len(rows):
            continue
        spans = [(start[p], start[p + 1]) for p in near[c] if p >= 0]
        cand = np.concatenate([by_cell[a:b] for a, b in spans])
        cand_x = np.concatenate([sorted_base[a:b] for a, b in spans])
        kk = min(k, len(cand))
        if not kk:
            continue
        for s0 in range(0, len(rows), chunk):
            r = rows[s0:s0 + chunk]
            v, j = _top_k(cand_x @ queries[r].T, kk)
            sims[r, :kk], idx[r, :kk] = v, cand[j]
    return sims, idx


def knn(
    embeddings: np.ndarray,
    *,
    k: int,
    queries: np.ndarray | None = None,
    exact_limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k nearest neighbours.

    Args:
        embeddings: `(N, D)` base vectors (normalised here).
        k: neighbours per query.
        queries: `(M, D)` query vectors; None = the base itself, in which case each row's
            own entry is removed (a row is never its own neighbour; exact copies still are).
        exact_limit: base size above which the approximate ``cell_knn`` is used
            (None: ``EXACT_LIMIT``).

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
    kk = min(k + 1 if self_query else k, n)
    if exact_limit is None:
        exact_limit = EXACT_LIMIT  # read at call time, so a benchmark can lower it
    if n <= exact_limit:
        import faiss

        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        sims, idx = index.search(q, kk)
    else:
        sims, idx = cell_knn(base, q, kk)
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
