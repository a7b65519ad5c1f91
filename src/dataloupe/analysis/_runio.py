"""Read a run's per-sample metrics into ``AnalysisInputs``; write findings and columns back.

Layout and columns: docs/architecture.md ("Runs", "Per-sample metrics"). Writes are
atomic (temporary file or dataset, then rename), and happen only after every input has
been read and checked, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from dataloupe._fileio import publish_dir, write_json_atomic
from dataloupe.analysis._base import UNDEFINED, AnalysisInputs, SampleArrays
from dataloupe.analysis._knn import KNN_DIM, pca_basis
from dataloupe.analysis._neighbours import content_hashes
from dataloupe.project import DataloupeError, Project
from dataloupe.runs import metrics_path, read_run, run_tables


def require_classifier(info: dict, run: str, what: str) -> None:
    """Error when ``run`` is a pretrain run: its metrics hold embeddings only, no class probabilities."""
    if info.get("kind") == "pretrain":
        raise DataloupeError(f"run {run!r} is a self-supervised pretrain run: its metrics hold embeddings only"
                             f" (no class probabilities), and {what} needs a classifier run; train one from its"
                             f" backbone with `dataloupe train ... pretrained=<project>/runs/{run}/checkpoints/best.pt`"
                             f" (a map works: `dataloupe reduce {run}`)")


def load_metrics(project: Project, run: str, table: str, *, columns: list[str] | None = None) -> pa.Table:
    """The run's metrics for ``table``, sorted by id; a clear error when not collected."""
    import lance

    path = metrics_path(project, run, table)
    if not path.exists():
        raise DataloupeError(f"run {run!r} has no per-sample metrics for table {table!r}: "
                             f"run `dataloupe collect {run} --table {table}` first")
    want = None if columns is None else (["id"] + [c for c in columns if c != "id"])
    return lance.dataset(str(path)).to_table(columns=want).sort_by("id")


def check_revision(metrics: pa.Table, run: str, table: str, revision: int | str | None) -> int:
    """The table revision the metrics were collected on; error if ``revision`` differs."""
    revs = set(metrics.column("table_revision").to_pylist()) if metrics.num_rows else set()
    have = revs.pop() if len(revs) == 1 else None
    if revision is not None and str(revision) != str(have):
        raise DataloupeError(f"run {run!r} has metrics for {table}@{have}, not @{revision}: "
                             f"run `dataloupe collect {run} --table {table}@{revision}`")
    return have


def _matrix(col: pa.ChunkedArray, width: int | None = None) -> np.ndarray:
    arr = col.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type):
        return arr.values.to_numpy(zero_copy_only=False).reshape(len(arr), arr.type.list_size)
    return np.stack(arr.to_numpy(zero_copy_only=False)) if len(arr) else np.zeros((0, width or 0))


def lance_columns(path: Path) -> list[str]:
    import lance

    return list(lance.dataset(str(path)).schema.names)


def _reduce_above(reduce_above: float | None) -> float:
    if reduce_above is None:
        from dataloupe.analysis import _knn

        return _knn.REDUCE_ABOVE  # read at call time, so a benchmark can lower it
    return reduce_above


def embedding_basis(path: Path, *, dim: int = KNN_DIM, reduce_above: float | None = None,
                    sample: int = 65_536) -> tuple[np.ndarray, np.ndarray] | None:
    """The PCA basis `(mean (D,), components (D, dim))` the kNN findings use for the
    embeddings of a metrics dataset, fitted on a random sample of ``sample`` rows; None
    when its N * D values are at most ``reduce_above`` (None: ``REDUCE_ABOVE``) and the
    embeddings are used whole."""
    import lance

    ds = lance.dataset(str(path))
    d = ds.schema.field("embedding").type.list_size
    n = ds.count_rows()
    if n * d <= _reduce_above(reduce_above):
        return None
    pick = np.sort(np.random.default_rng(0).choice(n, size=min(n, sample), replace=False))
    return pca_basis(_matrix(ds.take(pick.tolist(), columns=["embedding"]).column("embedding")), dim)


def read_embeddings(path: Path, *, dim: int = KNN_DIM, reduce_above: float | None = None,
                    chunk: int = 65_536, basis: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``(N, D)`` float32 embeddings of a metrics dataset, rows sorted by id.

    Above ``reduce_above`` values (N * D; None: ``REDUCE_ABOVE``), e.g. ImageNet's 1.28M x
    2048 stored as float16, the rows are read ``chunk`` at a time and projected to ``dim``
    PCA components (``embedding_basis``): the kNN findings then work on ``(N, dim)``
    float32 (1.3 GB at ImageNet size instead of 10.5 GB). ``basis``: project with this
    ``(mean, components)`` instead, whatever the size (another table's, so that both
    tables' rows are in one space).
    """
    import lance

    ds = lance.dataset(str(path))
    if basis is None:
        basis = embedding_basis(path, dim=dim, reduce_above=reduce_above)
    if basis is None:
        t = ds.to_table(columns=["id", "embedding"]).sort_by("id")
        return _matrix(t.column("embedding")).astype(np.float32)
    mean, comps = basis
    n = ds.count_rows()
    out = np.empty((n, comps.shape[1]), dtype=np.float32)
    ids = np.empty(n, dtype=np.int64)
    k = 0
    for b in ds.to_batches(columns=["id", "embedding"], batch_size=chunk):
        x = _matrix(pa.chunked_array([b.column("embedding")])).astype(np.float32)
        out[k:k + len(x)] = (x - mean) @ comps
        ids[k:k + len(x)] = b.column("id").to_numpy()
        k += len(x)
    return out[np.argsort(ids, kind="stable")]


def sample_set(project: Project, run: str, table: str, classes: list[str], *, hashes: bool = True,
               trained_on: bool = False, basis: tuple[np.ndarray, np.ndarray] | None = None,
               reduce_above: float | None = None) -> SampleArrays:
    """A ``SampleArrays`` from the run's metrics for ``table``, joined with the table's
    weights (and content hashes of its image files) at the collected revision;
    ``trained_on``: the run trained on ``table`` (its probabilities are in-sample);
    ``basis``, ``reduce_above``: how its embeddings are read (``read_embeddings``)."""
    from dataloupe.tables import open_table

    path = metrics_path(project, run, table)
    names = lance_columns(path) if path.exists() else None
    m = load_metrics(project, run, table, columns=None if names is None else [c for c in names if c != "embedding"])
    rev = check_revision(m, run, table, None)
    t = open_table(project, table, rev)
    rows = t.to_arrow(columns=["id", "path", "weight"])
    by_id = {int(i): j for j, i in enumerate(rows.column("id").to_numpy())}
    ids = m.column("id").to_numpy()
    missing = [int(i) for i in ids if int(i) not in by_id]
    if missing:
        raise DataloupeError(f"metrics of run {run!r} name ids absent from {table}@{rev} (e.g. {missing[:3]}); "
                             f"re-run `dataloupe collect {run} --table {table}@{rev}`")
    pos = np.array([by_id[int(i)] for i in ids], dtype=np.int64)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([UNDEFINED if v is None else index.get(v, -2) for v in m.column("label").to_pylist()])
    if (labels == -2).any():
        raise DataloupeError(f"metrics of run {run!r} on {table} hold labels outside the run's classes")
    if "probs" not in m.column_names:
        raise DataloupeError(f"metrics of run {run!r} on {table} hold no class probabilities (embeddings only)")
    probs = _matrix(m.column("probs")).astype(np.float32)
    if probs.shape[1] != len(classes):
        raise DataloupeError(f"metrics of run {run!r} on {table} have {probs.shape[1]} class "
                             f"probabilities, the run has {len(classes)} classes")
    emb = read_embeddings(path, basis=basis, reduce_above=reduce_above) if "embedding" in names else None
    aum = None
    if "aum" in m.column_names:
        aum = m.column("aum").to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    weights = rows.column("weight").to_numpy()[pos].astype(np.float32)
    paths = np.array(rows.column("path").to_pylist(), dtype=object)[pos]
    h = content_hashes([_file_or_none(t, p) for p in paths]) if hashes else None
    return SampleArrays(ids=ids, labels=labels, probs=probs, embeddings=emb, aum=aum, weights=weights, hashes=h,
                     probs_source="in-sample" if trained_on else "out-of-sample")


def _file_or_none(t, rel: str):
    try:
        return t.image_path(rel)
    except DataloupeError:  # outside the image root: never read
        return None


def load_inputs(project: Project, run: str, *, hashes: bool = True, k: int = 10,
                train_only: bool = False) -> tuple[AnalysisInputs, dict]:
    """``AnalysisInputs`` of a run (train and val tables; ``train_only``: the val table is not
    read) plus its ``run.json``."""
    info = read_run(project, run)
    require_classifier(info, run, "analysis")
    classes = list(info.get("classes") or [])
    if not classes:
        raise DataloupeError(f"run {run!r} records no classes in run.json")
    tables = run_tables(info)
    # every table's embeddings in the training table's space: projected with its PCA basis
    # when it is reduced, whole otherwise (a small validation table next to a reduced
    # training table would otherwise keep its full width and leakage could not compare them)
    reading = {}
    train_path = metrics_path(project, run, tables["train"]) if "train" in tables else None
    if train_path is not None and train_path.exists() and "embedding" in lance_columns(train_path):
        basis = embedding_basis(train_path)
        reading = dict(basis=basis) if basis is not None else dict(reduce_above=float("inf"))
    sets = {role: sample_set(project, run, name, classes, hashes=hashes, trained_on=role == "train", **reading)
            for role, name in tables.items() if role == "train" or not train_only}
    if "train" not in sets:
        raise DataloupeError(f"run {run!r} has no train table")
    return AnalysisInputs(classes, sets["train"], sets.get("val"), k=k, seed=int(info.get("seed") or 0)), info


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (NaN/inf refused: findings are cleaned before)."""
    write_json_atomic(path, obj, allow_nan=False)


def write_columns(project: Project, run: str, table: str, ids: np.ndarray, columns: dict[str, np.ndarray],
                  *, drop: tuple[str, ...] = (), chunk: int = 65_536) -> None:
    """Add or replace per-row ``columns`` (aligned with ``ids``) in the run's metrics for ``table``.

    The dataset is rewritten ``chunk`` rows at a time into a temporary dataset, then
    published: reading it whole first held every column in memory (at 1.28M rows x 2048
    float16 embeddings, +10 GiB of peak RSS on top of the analysis inputs).
    """
    import lance

    path = metrics_path(project, run, table)
    if not path.exists():
        load_metrics(project, run, table)  # its error: not collected
    ds = lance.dataset(str(path))
    keep = [c for c in ds.schema.names if c not in columns and c not in drop]
    ids = np.asarray(ids)
    sorter = np.argsort(ids, kind="stable")
    values = {name: np.asarray(v) for name, v in columns.items()}

    def batches():
        for b in ds.to_batches(columns=keep, batch_size=chunk):
            got = b.column(keep.index("id")).to_numpy()
            at = np.clip(np.searchsorted(ids, got, sorter=sorter), 0, max(len(ids) - 1, 0))
            pos = sorter[at] if len(ids) else at
            if len(got) and (not len(ids) or (ids[pos] != got).any()):
                raise DataloupeError(f"metrics of run {run!r} on {table} hold ids the new columns lack")
            yield pa.record_batch([b.column(i) for i in range(len(keep))] + [pa.array(v[pos]) for v in values.values()],
                                  names=keep + list(values))

    first = next(batches(), None)
    if first is None:  # no rows: the schema from an empty table
        empty = ds.to_table(columns=keep)
        first = pa.record_batch([empty.column(c).combine_chunks() for c in keep]
                                + [pa.array(v[:0]) for v in values.values()], names=keep + list(values))
        stream = [first]
    else:
        stream = batches()  # a fresh pass: ``first`` only gave the schema
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    lance.write_dataset(pa.RecordBatchReader.from_batches(first.schema, stream), str(tmp))
    publish_dir(tmp, path)
