"""Clusters of the embedding (HDBSCAN) with per-cluster label purity and confidence.

HDBSCAN is quadratic-ish in high dimensions (20,000 rows in 32-d: ~100 s on 2 cores), so
it runs on at most ``max_fit`` rows (a seeded sample) projected by PCA to at most
``pca_dims`` dimensions (density clustering needs few dimensions); every other row joins the cluster of its nearest fitted row (or noise, -1). ``min_cluster_size`` defaults
to 0.5% of the fitted rows (at least 10): a reporting granularity, not a tuned value.
"""

from __future__ import annotations

import numpy as np

from dataloupe.analysis._knn import knn, l2_normalize


def cluster_embeddings(
    embeddings: np.ndarray,
    *,
    min_cluster_size: int | None = None,
    max_fit: int = 10_000,
    pca_dims: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Cluster id per row `(N,)` int32, -1 = noise.

    Example:
        >>> from sklearn.datasets import make_blobs
        >>> x, _ = make_blobs(300, centers=3, n_features=8, random_state=0)
        >>> len(set(cluster_embeddings(x).tolist()) - {-1})
        3
    """
    from sklearn.cluster import HDBSCAN
    from sklearn.decomposition import PCA

    x = l2_normalize(embeddings)
    n = len(x)
    if n < 3:
        return np.full(n, -1, dtype=np.int32)
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(n, size=min(n, max_fit), replace=False))
    dims = min(pca_dims, x.shape[1], len(fit_rows))
    pca = PCA(n_components=dims, random_state=seed).fit(x[fit_rows])
    z = pca.transform(x).astype(np.float32)
    size = min_cluster_size or max(10, len(fit_rows) // 200)
    size = max(2, min(size, len(fit_rows)))
    fitted = HDBSCAN(min_cluster_size=size, copy=True).fit_predict(z[fit_rows])
    out = np.full(n, -1, dtype=np.int32)
    out[fit_rows] = fitted
    rest = np.setdiff1d(np.arange(n), fit_rows)
    if len(rest):
        _, idx = knn(x[fit_rows], k=1, queries=x[rest])
        out[rest] = fitted[idx[:, 0]]
    return out


def cluster_stats(
    clusters: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    *,
    examples: int = 8,
) -> list[dict]:
    """Per cluster: size, labeled count, majority label index, purity, mean confidence.

    Args:
        clusters: `(N,)` cluster ids (-1 = noise, reported too).
        labels: `(N,)` label indices, -1 = undefined.
        confidence: `(N,)` top-1 probability.
        examples: row indices listed per cluster (most confident first).

    Returns:
        Records sorted by cluster id; ``rows`` holds example row indices.
    """
    out = []
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        lab = labels[rows]
        lab = lab[lab >= 0]
        if len(lab):
            counts = np.bincount(lab)
            major, purity = int(counts.argmax()), float(counts.max() / len(lab))
        else:
            major, purity = -1, float("nan")
        order = rows[np.argsort(-confidence[rows], kind="stable")]
        out.append(dict(cluster=int(c), size=len(rows), labeled=len(lab), majority_label=major,
                        purity=purity, mean_confidence=float(confidence[rows].mean()),
                        rows=order[:examples].tolist()))
    return out
