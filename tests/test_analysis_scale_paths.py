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


def test_top_k_selection_is_exact():
    from dataloupe.analysis._knn import _top_k

    rng = np.random.default_rng(3)
    for c in (3, 200, 2000, 2001):  # below and above the two-stage size, padded and not
        scores = rng.normal(size=(c, 40)).astype(np.float32)
        vals, cols = _top_k(scores, 7)
        k = min(7, c)
        np.testing.assert_array_equal(vals, -np.sort(-scores.T, axis=1)[:, :k])
        np.testing.assert_array_equal(np.take_along_axis(scores.T, cols, 1), vals)


def test_cell_search_above_exact_limit_finds_clustered_neighbours():
    # the path large tables take (cell_knn), forced on 4,000 rows
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(40, 16)) * 3
    x = (centres[rng.integers(0, 40, 4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    sims_e, idx_e = knn(x, k=5)
    sims_a, idx_a = knn(x, k=5, exact_limit=1000)
    assert idx_a.shape == (4000, 5) and (idx_a >= 0).all()
    assert not (idx_a == np.arange(4000)[:, None]).any()  # a row is never its own neighbour
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(idx_a, idx_e)])
    assert recall > 0.9
    # similarities are exact for the neighbours found, and sorted
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(sims_a, np.einsum("nd,nkd->nk", xn, xn[idx_a]), atol=1e-5)
    assert (np.diff(sims_a, axis=1) <= 1e-6).all()
    # external queries (leakage's val -> train search)
    q = x[:300] + 0.01
    _, qi = knn(x, k=1, queries=q, exact_limit=1000)
    assert (qi[:, 0] == np.arange(300)).mean() > 0.95


def test_second_table_projected_with_the_training_tables_basis(tmp_path):
    # a reduced training table and a small validation table: both must be in one space
    # (leakage compares them), so the validation rows take the training table's basis
    from dataloupe.analysis._runio import embedding_basis

    rng = np.random.default_rng(5)
    train = rng.normal(size=(300, 64)).astype(np.float16)
    src = rng.choice(300, 40, replace=False)
    val = train[src]
    _metrics(tmp_path / "train.lance", train, np.arange(300, dtype=np.int64))
    _metrics(tmp_path / "val.lance", val, np.arange(40, dtype=np.int64))
    assert embedding_basis(tmp_path / "val.lance") is None  # small: used whole
    basis = embedding_basis(tmp_path / "train.lance", dim=8, reduce_above=0)
    zt = read_embeddings(tmp_path / "train.lance", basis=basis)
    zv = read_embeddings(tmp_path / "val.lance", basis=basis)
    assert zt.shape == (300, 8) and zv.shape == (40, 8)
    np.testing.assert_allclose(zv, zt[src], atol=1e-4)
    _, idx = knn(zt, k=1, queries=zv)
    np.testing.assert_array_equal(idx[:, 0], src)


def test_write_columns_streams_and_keeps_every_column(tmp_path):
    # the rewrite goes a chunk at a time; columns are matched to rows by id, not by order
    from types import SimpleNamespace

    import lance

    from dataloupe.analysis._runio import write_columns
    from dataloupe.project import DataloupeError

    folder = tmp_path / "runs" / "r" / "metrics"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(6)
    emb = rng.normal(size=(50, 4)).astype(np.float16)
    ids = rng.permutation(50).astype(np.int64)
    _metrics(folder / "t.lance", emb, ids, chunk=9)
    project = SimpleNamespace(runs_dir=tmp_path / "runs")
    order = np.arange(50, dtype=np.int64)  # the caller's order (sorted ids)
    write_columns(project, "r", "t", order, {"cluster": (order * 10).astype(np.int32)}, chunk=7)
    write_columns(project, "r", "t", order[::-1].copy(), {"cluster": (order[::-1] * 2).astype(np.int32),
                                                         "map_x": order[::-1].astype(np.float32)}, chunk=7)
    t = lance.dataset(str(folder / "t.lance")).to_table().sort_by("id")
    assert t.column_names == ["id", "embedding", "cluster", "map_x"]
    np.testing.assert_array_equal(t.column("cluster").to_numpy(), order * 2)
    got = t.column("embedding").combine_chunks().values.to_numpy().reshape(50, 4)
    np.testing.assert_array_equal(got[ids], emb)
    write_columns(project, "r", "t", order, {}, drop=("map_x",))
    assert lance.dataset(str(folder / "t.lance")).schema.names == ["id", "embedding", "cluster"]
    with pytest.raises(DataloupeError):
        write_columns(project, "r", "t", order[:40], {"cluster": order[:40]})
