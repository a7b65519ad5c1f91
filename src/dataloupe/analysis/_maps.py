"""Maps: 2-D or 3-D projections of embeddings (PaCMAP or UMAP), fit on one set and
applied to others, so train and val share one map.

Applying to new rows: UMAP uses its own ``transform``. PaCMAP's ``transform`` re-runs
the optimisation with the new rows as extra data (points of the fitted set can move), so
new rows are placed instead at the similarity-weighted mean of their k nearest fitted
rows' coordinates (cosine kNN, as the findings use).
"""

from __future__ import annotations

import numpy as np

from dataloupe.analysis._knn import knn, l2_normalize
from dataloupe.project import DataloupeError

METHODS = ("pacmap", "umap")


def _fit(x: np.ndarray, method: str, dims: int, seed: int):
    if method == "pacmap":
        import pacmap

        model = pacmap.PaCMAP(n_components=dims, n_neighbors=10, random_state=seed, apply_pca=True)
        return model, model.fit_transform(x, init="pca")
    import umap

    model = umap.UMAP(n_components=dims, n_neighbors=15, metric="cosine", random_state=seed)
    return model, model.fit_transform(x)


def reduce(
    fit: np.ndarray,
    *,
    method: str = "pacmap",
    dims: int = 2,
    apply: list[np.ndarray] = (),
    seed: int = 0,
    k: int = 10,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Project ``fit`` `(N, D)` to `(N, dims)` and place each array of ``apply`` on the same map.

    Args:
        fit: embeddings the map is fitted on.
        method: "pacmap" or "umap".
        dims: 2 or 3.
        apply: other `(M, D)` embeddings to place on the fitted map.
        seed: random seed.
        k: neighbours used to place new rows (PaCMAP).

    Returns:
        `(coords (N, dims) float32, [coords (M, dims) float32 per apply array])`.

    Example:
        >>> from sklearn.datasets import load_digits
        >>> x = load_digits().data
        >>> a, (b,) = reduce(x[:1000], method="pacmap", apply=[x[1000:]])
        >>> a.shape, b.shape
        ((1000, 2), (797, 2))
    """
    if method not in METHODS:
        raise DataloupeError(f"unknown map method {method!r}; known: {', '.join(METHODS)}")
    if dims not in (2, 3):
        raise DataloupeError(f"--dims must be 2 or 3, got {dims}")
    x = l2_normalize(fit)
    if len(x) < k + 2:
        raise DataloupeError(f"a map needs at least {k + 2} rows, got {len(x)}")
    model, coords = _fit(x, method, dims, seed)
    coords = np.asarray(coords, dtype=np.float32)
    placed = []
    for other in apply:
        y = l2_normalize(other)
        if len(y) == 0:
            placed.append(np.zeros((0, dims), np.float32))
        elif method == "umap":
            placed.append(np.asarray(model.transform(y), dtype=np.float32))
        else:
            sims, idx = knn(x, k=k, queries=y)
            w = np.clip(sims, 1e-6, None)[..., None]
            placed.append(((coords[idx] * w).sum(1) / w.sum(1)).astype(np.float32))
    return coords, placed
