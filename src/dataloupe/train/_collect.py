"""Collect per-sample metrics of a trained run on a table: one Lance row per table row.

Writes ``runs/<run>/metrics/<table>.lance`` with the columns of docs/architecture.md
("Per-sample metrics"): every row (labeled, undefined and excluded alike) gets
predictions, probabilities and its penultimate embedding; labeled rows get loss and
correctness; rows that were trained on get AUM and forgetting events from
``dynamics.npz``. A pretrain run (no head) writes embeddings only.

Example:
    >>> collect(Project.open(), "a")  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from dataloupe.data import ShardSampler, make_loader, open_cache, plan_loader, sample_set_from_table
from dataloupe.models import create_model
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import open_ref
from dataloupe.train import _runs
from dataloupe.train._checkpoint import load_checkpoint
from dataloupe.train._dynamics import aum, forgetting_events
from dataloupe.train._epoch import StepOptions, embed, predict


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
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def _dynamics_columns(folder: Path, ids: np.ndarray) -> tuple[pa.Array, pa.Array]:
    aum_col = np.full(len(ids), np.nan, dtype=np.float32)
    forg = np.zeros(len(ids), dtype=np.int32)
    known = np.zeros(len(ids), dtype=bool)
    path = folder / "dynamics.npz"
    if path.is_file():
        with np.load(path) as z:
            dyn_ids, margins = z["ids"], z["margins"]
        pos = {int(i): j for j, i in enumerate(dyn_ids)}
        a, f = aum(margins), forgetting_events(margins)
        for r, i in enumerate(ids.tolist()):
            j = pos.get(i)
            if j is not None and not np.isnan(a[j]):
                aum_col[r], forg[r], known[r] = a[j], f[j], True
    return (pa.array(aum_col, mask=~known, type=pa.float32()), pa.array(forg, mask=~known, type=pa.int32()))


def collect(project: Project, run: str, table: str | None = None, *, batch_size: int = 256) -> list[Path]:
    """Write per-sample metrics of ``run`` for ``table`` (``TABLE[@REV]``; default: its train and val tables).

    Returns:
        the written ``.lance`` paths.
    """
    info = _runs.read_run(project, run)
    if info.get("kind") == "pretrain":
        return collect_embeddings(project, run, table, batch_size=batch_size)
    folder = _runs.run_dir(project, run)
    refs = [table] if table else [f"{info['train_table']}@{info['train_revision']}",
                                  f"{info['val_table']}@{info['val_revision']}"]
    ckpt_path = folder / "checkpoints" / "best.pt"
    if not ckpt_path.is_file():
        raise DataloupeError(f"run {run} has no checkpoint yet ({ckpt_path}); train it first")
    ckpt = load_checkpoint(ckpt_path)
    classes = list(ckpt["classes"])
    model = create_model(ckpt["model_name"], len(classes), small_input=ckpt["small_input"])
    model.load_state_dict(ckpt["model"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    size = int(ckpt["image_size"])
    opts = StepOptions(device, tuple(ckpt["mean"]), tuple(ckpt["std"]),
                       torch.bfloat16 if device.type == "cuda" else None, tta_hflip=bool(ckpt.get("tta_hflip")))
    out = []
    for ref in refs:
        t = open_ref(project, ref)
        samples = sample_set_from_table(t, classes)
        plan = plan_loader(len(samples), size, cuda=device.type == "cuda")
        cache = open_cache(samples, size, project.cache_dir) if plan.mode == "cache" else None
        loader = make_loader(samples, plan, image_size=size, batch_size=batch_size, cache=cache,
                             sampler=ShardSampler(len(samples)))
        probs, emb = predict(model, loader, opts=opts, num_rows=len(samples), num_classes=len(classes),
                             emb_dim=model.num_features)
        out.append(_write(folder, t, samples, classes, probs, emb, trained=t.name == info["train_table"]))
    return out


def collect_embeddings(project: Project, run: str, table: str | None = None, *, batch_size: int = 256) -> list[Path]:
    """Write the backbone embeddings of pretrain run ``run`` for ``table`` (default: the run's tables).

    A pretrain run has no classifier head, so its metrics hold ``id``, ``table_revision``,
    ``split``, ``label`` and ``embedding`` only — no probabilities or predictions.

    Returns:
        the written ``.lance`` paths.
    """
    info = _runs.read_run(project, run)
    folder = _runs.run_dir(project, run)
    refs = [table] if table else [f"{t['table']}@{t['revision']}" for t in info["tables"]]
    ckpt_path = folder / "checkpoints" / "best.pt"
    if not ckpt_path.is_file():
        raise DataloupeError(f"run {run} has no backbone yet ({ckpt_path}); pretrain it first")
    ckpt = load_checkpoint(ckpt_path)
    model = create_model(ckpt["model_name"], 1, small_input=ckpt["small_input"])
    try:
        model.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in ckpt["model"].items()})
    except RuntimeError as e:
        raise DataloupeError(f"{ckpt_path} does not fit model {ckpt['model_name']}: {str(e).splitlines()[0]}") from e
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    size = int(ckpt["image_size"])
    amp = torch.bfloat16 if device.type == "cuda" else None
    opts = StepOptions(device, tuple(ckpt["mean"]), tuple(ckpt["std"]), amp)
    out = []
    for ref in refs:
        t = open_ref(project, ref)
        classes = list(t.classes)
        samples = sample_set_from_table(t, classes)
        plan = plan_loader(len(samples), size, cuda=device.type == "cuda")
        cache = open_cache(samples, size, project.cache_dir) if plan.mode == "cache" else None
        loader = make_loader(samples, plan, image_size=size, batch_size=batch_size, cache=cache,
                             sampler=ShardSampler(len(samples)))
        emb = embed(model.backbone, loader, opts=opts, num_rows=len(samples), emb_dim=model.num_features)
        cols = _row_columns(t, samples, classes)
        cols["embedding"] = _fixed_list(emb)
        out.append(_write_lance(folder, t.name, cols))
    return out


def _row_columns(t, samples, classes) -> dict[str, pa.Array]:
    """``id``, ``table_revision``, ``split`` and ``label`` of every row of ``samples``."""
    split = t.to_arrow(columns=["id", "split"]).column("split")
    names = np.array(classes, dtype=object)
    return {
        "id": pa.array(samples.ids, type=pa.int64()),
        "table_revision": pa.array(np.full(len(samples), int(t.revision)), type=pa.int64()),
        "split": split.combine_chunks() if hasattr(split, "combine_chunks") else split,
        "label": pa.array([names[i] if i >= 0 else None for i in samples.labels], type=pa.string()),
    }


def _write(folder: Path, t, samples, classes, probs, emb, *, trained: bool) -> Path:
    m = sample_metrics(probs, samples.labels)
    labeled = samples.labels >= 0
    names = np.array(classes, dtype=object)
    cols = _row_columns(t, samples, classes)
    cols.update({
        "predicted": pa.array(names[m["predicted"]].tolist(), type=pa.string()),
        "confidence": pa.array(m["confidence"]),
        "margin": pa.array(m["margin"]),
        "entropy": pa.array(m["entropy"]),
        "loss": pa.array(m["loss"], mask=~labeled, type=pa.float32()),
        "correct": pa.array(m["correct"], mask=~labeled, type=pa.bool_()),
        "probs": _fixed_list(probs),
        "embedding": _fixed_list(emb),
    })
    if trained:
        cols["aum"], cols["forgetting"] = _dynamics_columns(folder, samples.ids)
    else:
        cols["aum"] = pa.nulls(len(samples), type=pa.float32())
        cols["forgetting"] = pa.nulls(len(samples), type=pa.int32())
    return _write_lance(folder, t.name, cols)


def _write_lance(folder: Path, name: str, cols: dict[str, pa.Array]) -> Path:
    import lance

    path = folder / "metrics" / f"{name}.lance"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.lance.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lance.write_dataset(pa.table(cols), str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path
