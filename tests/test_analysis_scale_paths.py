"""ImageNet-size paths of the analysis on tiny data: float16 embeddings, streamed PCA for kNN."""

import numpy as np
import pyarrow as pa
import pytest

from dataloupe.analysis import knn
from dataloupe.analysis._knn import pca_basis
from dataloupe.analysis._runio import read_embeddings


def _metrics(path, emb, ids, chunk=50):
    import lance

    d = emb.shape[1]
    batches = [pa.record_batch([pa.array(ids[s:s + chunk]),
                                pa.FixedSizeListArray.from_arrays(pa.array(emb[s:s + chunk].ravel()), d)],
                               names=["id", "embedding"]) for s in range(0, len(ids), chunk)]
    lance.write_dataset(pa.Table.from_batches(batches), str(path), max_rows_per_file=60)


def test_float16_embeddings_read_sorted_by_id(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 16)).astype(np.float16)
    ids = rng.permutation(200).astype(np.int64)  # shard order, as collect on several processes writes
    _metrics(tmp_path / "m.lance", emb, ids)
    got = read_embeddings(tmp_path / "m.lance")
    assert got.dtype == np.float32 and got.shape == (200, 16)
    np.testing.assert_array_equal(got[ids], emb.astype(np.float32))


def test_pca_reduction_keeps_neighbours(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 64)) * 4
    y = rng.integers(0, 5, 300)
    emb = (centres[y] + rng.normal(size=(300, 64))).astype(np.float16)
    ids = np.arange(300, dtype=np.int64)[::-1].copy()
    _metrics(tmp_path / "m.lance", emb, ids)
    z = read_embeddings(tmp_path / "m.lance", dim=8, reduce_above=0, chunk=64)
    assert z.shape == (300, 8)
    full = emb[np.argsort(ids)].astype(np.float32)
    _, idx_full = knn(full, k=5)
    _, idx_pca = knn(z, k=5)
    y_sorted = y[np.argsort(ids)]
    # the reduced space keeps the class structure the kNN findings rely on
    assert (y_sorted[idx_pca] == y_sorted[:, None]).mean() > 0.95
    assert (y_sorted[idx_full] == y_sorted[:, None]).mean() > 0.95


def test_pca_basis_orders_components_by_variance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 3)) * np.array([10.0, 1.0, 0.1])
    mean, comps = pca_basis(x, 2)
    assert comps.shape == (3, 2)
    assert abs(abs(comps[0, 0]) - 1) < 0.01 and abs(abs(comps[1, 1]) - 1) < 0.05


def test_collect_embedding_dtype_choice():
    from dataloupe.project import DataloupeError
    from dataloupe.train._collect import _emb_dtype

    assert _emb_dtype("auto", 1_281_167, 2048) == "float16"
    assert _emb_dtype("auto", 60_000, 512) == "float32"
    with pytest.raises(DataloupeError):
        _emb_dtype("bfloat16", 1, 1)
