"""Collect per-sample metrics of a trained run on a table: one Lance row per table row.

Writes ``runs/<run>/metrics/<table>.lance`` with the columns of docs/architecture.md
("Per-sample metrics"): every row (labeled, undefined and excluded alike) gets
predictions, probabilities and its penultimate embedding; labeled rows get loss and
correctness; rows that were trained on get AUM and forgetting events from
``dynamics.npz``. A pretrain run (no head) writes embeddings only.

Every process collects (under torchrun): each takes its shard of the rows (the
evaluation split, positions ``rank::world``), streams its predictions into Lance
fragments ``chunk_rows`` rows at a time, and the primary commits all processes'
fragments as one dataset version (merged by metadata; no process holds more than one
chunk, so peak memory does not grow with the number of rows). Rows are in shard order;
readers sort by ``id``. A one-process collect of a small table also keeps the unmerged views
(``<table>.views.npz``, ``VIEWS_MAX_BYTES``), from which a memory over the run writes its metrics
(:func:`collect_from_views`) without a second forward pass.

Example:
    >>> collect(Project.open(), "a")  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import torch

from dataloupe._fileio import publish_dir
from dataloupe.data import ShardSampler, make_loader, open_cache, plan_loader, sample_set_from_table
from dataloupe.models import amp_dtype, create_model, merge_views
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import open_ref
from dataloupe import runs
from dataloupe.train._checkpoint import load_checkpoint
from dataloupe.train._distributed import DistContext, init_distributed, shutdown_distributed
from dataloupe.train._dynamics import aum, forgetting_events
from dataloupe.train._epoch import StepOptions, predict_batches

CHUNK_ROWS = 32_768  # rows per written fragment (and per in-memory chunk) of each process
FP16_ABOVE = 1 << 28  # N * D embedding values above which "auto" stores them as float16 (ImageNet: 2.6e9)
# A one-process collect also keeps each row's unmerged views (logits and embedding of the image and
# of its mirror, float32: ``<table>.views.npz``) when they take at most this many bytes, so a memory
# run (dataloupe knn) writes its metrics from them instead of a second forward pass over the rows
# (chihuahua-muffin: 4,733 x 2 x 514 floats, 19 MB; ImageNet's would be 21 GB and is never kept).
VIEWS_MAX_BYTES = 256 << 20


def _emb_dtype(embedding_dtype: str, rows: int, dim: int) -> str:
    if embedding_dtype == "auto":
        return "float16" if rows * dim > FP16_ABOVE else "float32"
    if embedding_dtype not in ("float16", "float32"):
        raise DataloupeError(f"embedding_dtype must be auto, float16 or float32, not {embedding_dtype!r}")
    return embedding_dtype


def sample_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample scores from ``probs (N, K)`` and ``labels (N,)`` (-1 = undefined).

    Returns:
        ``predicted (N,)`` int64, ``confidence``, ``margin`` (top-1 - top-2 probability),
        ``entropy``, ``loss`` (NaN where undefined) float32, ``correct`` bool.
    """
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    pred = probs.argmax(1)
    top = np.sort(probs, axis=1)[:, ::-1]
    second = top[:, 1] if probs.shape[1] > 1 else np.zeros(len(probs))
    labeled = labels >= 0
    loss = np.full(len(probs), np.nan)
    loss[labeled] = -np.log(p[labeled, labels[labeled]])
    return {
        "predicted": pred.astype(np.int64),
        "confidence": top[:, 0].astype(np.float32),
        "margin": (top[:, 0] - second).astype(np.float32),
        "entropy": (-(p * np.log(p)).sum(1)).astype(np.float32),
        "loss": loss.astype(np.float32),
        "correct": pred == labels,
    }


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(values).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


class _Dynamics:
    """AUM and forgetting events of the trained rows, looked up by id (vectorised)."""

    def __init__(self, folder: Path):
        self.ids = np.zeros(0, np.int64)
        path = folder / "dynamics.npz"
        if path.is_file():
            with np.load(path) as z:
                ids, margins = z["ids"].astype(np.int64), z["margins"]
            order = np.argsort(ids, kind="stable")
            self.ids, self.aum = ids[order], aum(margins)[order]
            self.forg = forgetting_events(margins)[order]

    def columns(self, ids: np.ndarray) -> tuple[pa.Array, pa.Array]:
        aum_col = np.full(len(ids), np.nan, dtype=np.float32)
        forg = np.zeros(len(ids), dtype=np.int32)
        known = np.zeros(len(ids), dtype=bool)
        if len(self.ids):
            j = np.clip(np.searchsorted(self.ids, ids), 0, len(self.ids) - 1)
            known = (self.ids[j] == ids) & ~np.isnan(self.aum[j])
            aum_col[known], forg[known] = self.aum[j[known]], self.forg[j[known]]
        return pa.array(aum_col, mask=~known, type=pa.float32()), pa.array(forg, mask=~known, type=pa.int32())


def _load_model(folder: Path, run: str, ckpt_name: str = "best.pt"):
    ckpt_path = folder / "checkpoints" / ckpt_name
    if not ckpt_path.is_file():
        raise DataloupeError(f"run {run} has no checkpoint yet ({ckpt_path}); train it first")
    return ckpt_path, load_checkpoint(ckpt_path)


def collect(project: Project, run: str, table: str | None = None, *, batch_size: int = 256,
            ctx: DistContext | None = None, chunk_rows: int = CHUNK_ROWS, embedding_dtype: str = "auto") -> list[Path]:
    """Write per-sample metrics of ``run`` for ``table`` (``TABLE[@REV]``; default: its train and val tables).

    Under torchrun every process collects its shard (pass the job's ``ctx``, or it is set up
    from torchrun's environment); the primary commits the merged dataset.

    Args:
        embedding_dtype: ``float32``, ``float16`` (half the bytes) or ``auto`` (float16 above
            ``FP16_ABOVE`` values, e.g. ImageNet's 1.28M x 2048).

    Returns:
        the written ``.lance`` paths.
    """
    own = ctx is None
    ctx = ctx or init_distributed("auto")
    try:
        info = runs.read_run(project, run)
        if info.get("kind") == "pretrain":
            return collect_embeddings(project, run, table, batch_size=batch_size, ctx=ctx, chunk_rows=chunk_rows,
                                      embedding_dtype=embedding_dtype)
        folder = runs.run_dir(project, run)
        refs = [table] if table else [f"{info['train_table']}@{info['train_revision']}",
                                      f"{info['val_table']}@{info['val_revision']}"]
        ckpt_path, ckpt = _load_model(folder, run)
        classes = list(ckpt["classes"])
        model = create_model(ckpt["model_name"], len(classes), small_input=ckpt["small_input"])
        model.load_state_dict(ckpt["model"])
        opts = _options(model, ckpt, ctx, tta=bool(ckpt.get("tta_hflip")))
        dyn = _Dynamics(folder)
        n_views = 2 if opts.tta_hflip else 1
        out = []
        for ref in refs:
            t = open_ref(project, ref)
            samples = sample_set_from_table(t, classes)
            trained = t.name == info["train_table"]
            rows = _rows(t, samples, classes)
            dtype = _emb_dtype(embedding_dtype, len(samples), model.num_features)
            views = _views_path(folder, t.name)
            views.unlink(missing_ok=True)  # never left behind by an earlier checkpoint
            kept = None
            view_bytes = len(samples) * n_views * (model.num_features + len(classes)) * 4
            if ctx.world_size == 1 and view_bytes <= VIEWS_MAX_BYTES:
                kept = (np.zeros((len(samples), n_views, len(classes)), np.float32),
                        np.zeros((len(samples), n_views, model.num_features), np.float32))

            def chunk(pos, probs, emb, *view_arrays, rows=rows, samples=samples, trained=trained, dtype=dtype,
                      kept=kept):
                if kept is not None:
                    kept[0][pos], kept[1][pos] = view_arrays
                return _metric_batch(rows, pos, probs, emb, classes, samples.labels[pos], dyn if trained else None,
                                     dtype)

            empty = (np.zeros(0, np.int64), np.zeros((0, len(classes)), np.float32),
                     np.zeros((0, model.num_features), np.float32))
            if kept is not None:
                empty += (np.zeros((0, n_views, len(classes)), np.float32),
                          np.zeros((0, n_views, model.num_features), np.float32))
            batches = _chunks(predict_batches(model, _loader(project, samples, ckpt, ctx, batch_size), opts=opts,
                                              views=kept is not None), chunk_rows, chunk, empty)
            out.append(_write_parts(folder, t.name, batches, ctx))
            if kept is not None:
                _save_views(views, ids=samples.ids, revision=int(t.revision), logits=kept[0], embeddings=kept[1],
                            stamp=_stamp(ckpt_path))
        return out
    finally:
        if own:
            shutdown_distributed(ctx)


def _views_path(folder: Path, table: str) -> Path:
    return folder / "metrics" / f"{table}.views.npz"


def _stamp(ckpt_path: Path) -> np.ndarray:
    """Which checkpoint file made the views: its size and modification time (ns)."""
    st = ckpt_path.stat()
    return np.array([st.st_size, st.st_mtime_ns], np.int64)


def _save_views(path: Path, **arrays) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def kept_views(project: Project, run: str, ref: str) -> dict | None:
    """The views ``collect`` kept of ``run`` on ``ref`` (``TABLE@REV``), or None when there are none,
    or they are of another revision or another checkpoint than the run's ``best.pt`` now.

    Returns:
        ``ids (N,)``, ``logits (N, V, K)``, ``embeddings (N, V, D)`` float32, rows in the table's
        sample order (V = 2 when the run mirror-averages: the image, then its mirror).
    """
    folder = runs.run_dir(project, run)
    table = open_ref(project, ref)
    path, ckpt_path = _views_path(folder, table.name), folder / "checkpoints" / "best.pt"
    if not path.is_file() or not ckpt_path.is_file():
        return None
    with np.load(path) as z:
        if int(z["revision"]) != int(table.revision) or not np.array_equal(z["stamp"], _stamp(ckpt_path)):
            return None
        return {"ids": z["ids"], "logits": z["logits"], "embeddings": z["embeddings"]}


def collect_from_views(project: Project, run: str, base: str, head: Callable, *, batch_size: int = 256,
                       chunk_rows: int = CHUNK_ROWS) -> list[Path] | None:
    """Write ``run``'s metrics without a forward pass: its model is ``base``'s network with ``head``
    on top (``head(logits, embeddings) -> logits``, e.g. a memory's vote), so its prediction is
    ``head`` on each view ``collect`` kept of ``base``, merged as evaluation merges them.

    Returns the written paths, or None (nothing written) when ``base`` has no current views of
    one of ``run``'s tables: the caller then runs :func:`collect`.
    """
    info = runs.read_run(project, run)
    refs = [f"{info['train_table']}@{info['train_revision']}", f"{info['val_table']}@{info['val_revision']}"]
    kept = [kept_views(project, base, ref) for ref in refs]
    if any(v is None for v in kept):
        return None
    folder = runs.run_dir(project, run)
    _, ckpt = _load_model(folder, run)
    classes = list(ckpt["classes"])
    tables = [open_ref(project, ref) for ref in refs]
    sample_sets = [sample_set_from_table(t, classes) for t in tables]
    if any(not np.array_equal(v["ids"], s.ids) for v, s in zip(kept, sample_sets)):
        return None  # checked before anything is written
    dyn = _Dynamics(folder)
    ctx = init_distributed("cpu")
    try:
        out = []
        for t, samples, views in zip(tables, sample_sets, kept):
            rows = _rows(t, samples, classes)
            dtype = _emb_dtype("auto", len(samples), views["embeddings"].shape[2])
            trained = t.name == info["train_table"]

            def batches(views=views):
                with torch.no_grad():
                    for s0 in range(0, len(views["ids"]), batch_size):
                        sl = slice(s0, s0 + batch_size)
                        outs = []
                        for v in range(views["logits"].shape[1]):
                            emb = torch.from_numpy(views["embeddings"][sl, v])
                            outs.append((head(torch.from_numpy(views["logits"][sl, v]), emb), emb))
                        logits, emb = merge_views(outs, embedding=True)
                        yield (np.arange(sl.start, sl.start + len(emb)), torch.softmax(logits.float(), 1).numpy(),
                               emb.float().numpy())

            def chunk(pos, probs, emb, rows=rows, samples=samples, trained=trained, dtype=dtype):
                return _metric_batch(rows, pos, probs, emb, classes, samples.labels[pos], dyn if trained else None,
                                     dtype)

            empty = (np.zeros(0, np.int64), np.zeros((0, len(classes)), np.float32),
                     np.zeros((0, views["embeddings"].shape[2]), np.float32))
            out.append(_write_parts(folder, t.name, _chunks(batches(), chunk_rows, chunk, empty), ctx))
        return out
    finally:
        shutdown_distributed(ctx)


def _options(model, ckpt, ctx: DistContext, *, tta: bool = False) -> StepOptions:
    """Evaluate as training did: the run's autocast setting (checkpoints before it was saved: bf16 on
    CUDA) and NHWC, which makes oneDNN's and cuDNN's convolutions faster (weights load into either)."""
    model.to(ctx.device, memory_format=torch.channels_last)
    amp = amp_dtype(ckpt.get("amp", "auto"), ctx.device)
    return StepOptions(ctx.device, tuple(ckpt["mean"]), tuple(ckpt["std"]), amp, channels_last=True, tta_hflip=tta)


def _loader(project: Project, samples, ckpt, ctx: DistContext, batch_size: int):
    size = int(ckpt["image_size"])
    cuda = ctx.device.type == "cuda"
    plan = plan_loader(len(samples), size, cuda=cuda, world_size=ctx.world_size)
    cache = (open_cache(samples, size, project.cache_dir, primary=ctx.is_primary(), barrier=ctx.barrier)
             if plan.mode == "cache" else None)
    return make_loader(samples, plan, image_size=size, batch_size=batch_size, cache=cache, pin_memory=cuda,
                       persistent=False,
                       sampler=ShardSampler(len(samples), num_replicas=ctx.world_size, rank=ctx.rank))


def _chunks(batches, chunk_rows: int, make: Callable, empty: tuple) -> Iterator[pa.RecordBatch]:
    """Group ``(positions, probs, emb)`` batches into record batches of about ``chunk_rows`` rows
    (one record batch of ``empty`` arrays when there are none, so every process knows the schema)."""
    buf: list = []
    n = 0
    made = False
    for b in batches:
        buf.append(b)
        n += len(b[0])
        if n >= chunk_rows:
            yield make(*(np.concatenate(x) for x in zip(*buf)))
            buf, n, made = [], 0, True
    if buf:
        yield make(*(np.concatenate(x) for x in zip(*buf)))
    elif not made:
        yield make(*empty)


def _rows(t, samples, classes) -> dict:
    """Per-row columns of the whole table, kept small: ids, revision, split and label as arrays."""
    split = t.to_arrow(columns=["id", "split"]).column("split").combine_chunks()
    return {"ids": samples.ids, "revision": int(t.revision), "split": split,
            "names": np.array(list(classes) + [None], dtype=object)}


def _row_columns(rows: dict, pos: np.ndarray, labels: np.ndarray) -> dict[str, pa.Array]:
    """``id``, ``table_revision``, ``split`` and ``label`` of rows ``pos``."""
    return {
        "id": pa.array(rows["ids"][pos], type=pa.int64()),
        "table_revision": pa.array(np.full(len(pos), rows["revision"]), type=pa.int64()),
        "split": rows["split"].take(pa.array(pos)),
        "label": pa.array(rows["names"][labels].tolist(), type=pa.string()),
    }


def _metric_batch(rows, pos, probs, emb, classes, labels, dyn, embedding_dtype) -> pa.RecordBatch:
    m = sample_metrics(probs, labels)
    labeled = labels >= 0
    cols = _row_columns(rows, pos, labels)
    cols.update({
        "predicted": pa.array(rows["names"][m["predicted"]].tolist(), type=pa.string()),
        "confidence": pa.array(m["confidence"]),
        "margin": pa.array(m["margin"]),
        "entropy": pa.array(m["entropy"]),
        "loss": pa.array(m["loss"], mask=~labeled, type=pa.float32()),
        "correct": pa.array(m["correct"], mask=~labeled, type=pa.bool_()),
        "probs": _fixed_list(probs.astype(np.float32)),
        "embedding": _fixed_list(emb.astype(embedding_dtype)),
    })
    if dyn is not None:
        cols["aum"], cols["forgetting"] = dyn.columns(rows["ids"][pos])
    else:
        cols["aum"] = pa.nulls(len(pos), type=pa.float32())
        cols["forgetting"] = pa.nulls(len(pos), type=pa.int32())
    return pa.record_batch(list(cols.values()), names=list(cols))


def collect_embeddings(project: Project, run: str, table: str | None = None, *, batch_size: int = 256,
                       ctx: DistContext | None = None, chunk_rows: int = CHUNK_ROWS,
                       embedding_dtype: str = "auto") -> list[Path]:
    """Write the backbone embeddings of pretrain run ``run`` for ``table`` (default: the run's tables).

    A pretrain run has no classifier head, so its metrics hold ``id``, ``table_revision``,
    ``split``, ``label`` and ``embedding`` only — no probabilities or predictions.

    Returns:
        the written ``.lance`` paths.
    """
    own = ctx is None
    ctx = ctx or init_distributed("auto")
    try:
        info = runs.read_run(project, run)
        folder = runs.run_dir(project, run)
        refs = [table] if table else [f"{t['table']}@{t['revision']}" for t in info["tables"]]
        ckpt_path, ckpt = _load_model(folder, run)
        model = create_model(ckpt["model_name"], 1, small_input=ckpt["small_input"])
        try:
            model.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in ckpt["model"].items()})
        except RuntimeError as e:
            raise DataloupeError(f"{ckpt_path} does not fit model {ckpt['model_name']}: "
                                 f"{str(e).splitlines()[0]}") from e
        opts = _options(model, ckpt, ctx)
        out = []
        for ref in refs:
            t = open_ref(project, ref)
            classes = list(t.classes)
            samples = sample_set_from_table(t, classes)
            rows = _rows(t, samples, classes)
            loader = _loader(project, samples, ckpt, ctx, batch_size)

            def batches(loader=loader):
                model.backbone.eval()
                with torch.no_grad():
                    for images, _, positions in loader:
                        with opts.autocast():
                            emb = model.backbone(opts.inputs(images))
                        yield positions.numpy(), emb.float().cpu().numpy()

            dtype = _emb_dtype(embedding_dtype, len(samples), model.num_features)

            def chunk(pos, emb, rows=rows, samples=samples, dtype=dtype):
                cols = _row_columns(rows, pos, samples.labels[pos])
                cols["embedding"] = _fixed_list(emb.astype(dtype))
                return pa.record_batch(list(cols.values()), names=list(cols))

            empty = (np.zeros(0, np.int64), np.zeros((0, model.num_features), np.float32))
            out.append(_write_parts(folder, t.name, _chunks(batches(), chunk_rows, chunk, empty), ctx))
        return out
    finally:
        if own:
            shutdown_distributed(ctx)


def _write_parts(folder: Path, name: str, batches: Iterator[pa.RecordBatch], ctx: DistContext) -> Path:
    """Each process writes its batches as fragments; the primary commits them all as one dataset.

    Fragments are written into a temporary dataset folder shared by all processes (file
    names are unique per writer); the primary commits every process's fragment metadata
    with one ``Overwrite`` and renames the folder into place.
    """
    import lance
    from lance.fragment import write_fragments

    path = folder / "metrics" / f"{name}.lance"
    tmp = path.with_name(f".{name}.lance.tmp")
    if ctx.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    ctx.barrier()
    first = next(batches)
    schema = first.schema

    def all_batches():
        yield first
        yield from batches

    reader = pa.RecordBatchReader.from_batches(schema, all_batches())
    frags = write_fragments(reader, str(tmp), schema=schema, mode="overwrite", max_rows_per_file=1 << 30)
    gathered = ctx.all_gather_object(frags)
    if ctx.is_primary():
        fragments = [f for fs in gathered for f in fs]
        lance.LanceDataset.commit(str(tmp), lance.LanceOperation.Overwrite(schema, fragments))
        publish_dir(tmp, path)
    ctx.barrier()
    return path
