"""A memory run: a finished classifier plus a kNN memory of its training rows, as one model.

``memory_run(project, "m", "base")`` writes run ``m``: a checkpoint of the ``knn:<model>``
classifier (:mod:`dataloupe.models._memory`) whose memory holds the embeddings of the training
table's labeled rows, with their labels, and of the ``pool_fraction`` of its undefined rows that
``base`` predicts most confidently, with that prediction; its validation top-1 measured the way
training measures it, and its per-sample metrics (from the views ``base``'s collect kept: no
second forward pass; ``collect`` when there are none). Analysis, the loop's rules,
serving and export then read it as any run. Validation rows never enter the memory.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import torch

from dataloupe import runs
from dataloupe.data import sample_set_from_table
from dataloupe.models import create_model, memory_name, parse_memory_name
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import open_ref
from dataloupe.train._checkpoint import load_checkpoint
from dataloupe.train._ensemble import write_derived_run

DEFAULTS = {"k": 20, "temperature": 0.1, "pool_fraction": 0.5, "weight": 1.0}
# The memory lives in the checkpoint and in memory at serving: 1 GiB of float32 embeddings is
# ~130,000 rows of ResNet-50's 2,048 (ImageNet's 1.28M labeled rows would be 10 GiB).
MAX_MEMORY_BYTES = 1 << 30


def check_memory_settings(k: int, temperature: float, pool_fraction: float, weight: float) -> None:
    """Refuse settings the vote cannot use (before anything is trained or written)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataloupeError(f"knn: k must be a whole number >= 1, got {k!r}")
    for key, value in (("temperature", temperature), ("weight", weight), ("pool_fraction", pool_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataloupeError(f"knn: {key} must be a number, got {value!r}")
    if temperature <= 0 or weight < 0 or not 0.0 <= pool_fraction <= 1.0:
        raise DataloupeError(f"knn: temperature must be > 0, weight >= 0 and pool_fraction in [0, 1]; got "
                             f"temperature={temperature}, weight={weight}, pool_fraction={pool_fraction}")


def memory_rows(project: Project, base: str, info: dict, classes: list[str],
                pool_fraction: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(embeddings (N, D), class indices (N,), counts)`` of the memory: the training revision's
    labeled rows (weight > 0) with their labels, and the most confident ``pool_fraction`` of its
    undefined rows (weight > 0) with ``base``'s prediction; from the metrics ``collect`` wrote."""
    from dataloupe.analysis._runio import load_metrics  # noqa: PLC0415

    samples = sample_set_from_table(open_ref(project, f"{info['train_table']}@{info['train_revision']}"), classes)
    use = samples.weights > 0
    given = dict(zip(samples.ids[use & (samples.labels >= 0)].tolist(),
                     samples.labels[use & (samples.labels >= 0)].tolist()))
    pool = set(samples.ids[use & (samples.labels < 0)].tolist())
    m = load_metrics(project, base, info["train_table"], columns=["id", "predicted", "confidence", "embedding"])
    ids = np.asarray(m["id"].to_pylist())
    index = {c: i for i, c in enumerate(classes)}
    emb = np.asarray(m["embedding"].to_pylist(), np.float32)
    conf = np.asarray(m["confidence"].to_pylist(), np.float64)
    pred = np.array([index.get(p, -1) for p in m["predicted"].to_pylist()])
    in_given = np.array([i in given for i in ids.tolist()], bool)
    in_pool = np.array([i in pool for i in ids.tolist()], bool)
    if not in_given.any():
        raise DataloupeError(f"run {base!r}: its training revision has no labeled rows for the memory")
    take = int(round(pool_fraction * int(in_pool.sum())))
    chosen = np.zeros(len(ids), bool)
    if take:
        order = np.flatnonzero(in_pool)[np.argsort(-conf[in_pool], kind="stable")]
        chosen[order[:take]] = True
    labels = np.where(in_given, np.array([given.get(i, -1) for i in ids.tolist()]), pred)
    keep = in_given | chosen
    counts = {"labeled": int(in_given.sum()), "pool": int(chosen.sum()), "pool_rows": int(in_pool.sum())}
    return emb[keep], labels[keep], counts


def memory_run(project: Project, run: str, base: str, *, k: int = 20, temperature: float = 0.1,
               pool_fraction: float = 0.5, weight: float = 1.0, force: bool = False) -> dict:
    """Write run ``run``: the completed classifier run ``base`` with a kNN memory of its training rows.

    ``base``'s per-sample metrics on its training table (``collect``) give the embeddings and
    its confidence; they are collected first when missing. The prediction is the mean of the
    head's softmax and the memory's vote (``weight`` times it: ``weight / (1 + weight)`` of the
    blend). Refused before anything is written: a missing or unfinished ``base``, a pretrain
    or memory run as ``base``, settings out of range, an existing ``run`` without ``force``.

    Returns:
        the run record (``run.json``): ``kind: memory``, ``base``, ``memory`` (settings and row
        counts), ``best_val_top1``.
    """
    runs.check_run_name(run)
    check_memory_settings(k, temperature, pool_fraction, weight)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DataloupeError("dataloupe knn runs in one process (it evaluates and collects once): "
                             "start it without torchrun")
    if run == base:
        raise DataloupeError(f"run {run!r} cannot be its own base")
    info = runs.read_run(project, base)
    if info.get("kind") in ("pretrain", "memory"):
        raise DataloupeError(f"run {base!r} is a {info['kind']} run: a memory is added to a trained classifier")
    if info.get("status") != "completed":
        raise DataloupeError(f"run {base!r} is {info.get('status', 'unfinished')}: only a completed run takes a memory")
    ckpt = load_checkpoint(runs.run_dir(project, base) / "checkpoints" / "best.pt")
    if parse_memory_name(ckpt["model_name"]) is not None:
        raise DataloupeError(f"run {base!r} has a memory already")
    folder = runs.run_dir(project, run)
    if folder.exists() and not force:
        raise DataloupeError(f"run {run!r} exists: choose another name, or force=True (--force) to replace it")
    t0 = time.time()
    classes = list(ckpt["classes"])
    if info["train_table"] not in runs.metrics_tables(project, base):
        from dataloupe.train._collect import collect  # noqa: PLC0415

        collect(project, base, table=f"{info['train_table']}@{info['train_revision']}")
    keys, labels, counts = memory_rows(project, base, info, classes, pool_fraction)
    if keys.nbytes > MAX_MEMORY_BYTES:
        raise DataloupeError(f"a memory of {len(keys):,} rows x {keys.shape[1]} floats is "
                             f"{keys.nbytes / 2**30:.1f} GiB (limit {MAX_MEMORY_BYTES / 2**30:.1f} GiB, it travels "
                             "in the checkpoint): lower pool_fraction, or keep the run without a memory")
    name = memory_name(ckpt["model_name"])
    model = create_model(name, len(classes), small_input=bool(ckpt["small_input"]))
    missing = model.load_state_dict(ckpt["model"], strict=False)
    if missing.unexpected_keys or [key for key in missing.missing_keys if not key.startswith("memory.")]:
        raise DataloupeError(f"run {base!r}: its checkpoint does not fit {ckpt['model_name']}")
    model.memory.fill(torch.from_numpy(keys), torch.from_numpy(labels), k=k, temperature=temperature, weight=weight)
    if folder.exists():
        shutil.rmtree(folder)
    settings = {"k": k, "temperature": temperature, "pool_fraction": pool_fraction, "weight": weight, **counts}
    from dataloupe.train._collect import collect_from_views  # noqa: PLC0415

    # The network is base's, so its per-view outputs, kept by base's collect, give the memory's
    # prediction without a second forward pass over the rows (falls back to collect without them).
    return write_derived_run(project, run, model, name, ckpt, base, info,
                             {"kind": "memory", "base": base, "memory": settings}, t0,
                             write_metrics=lambda: collect_from_views(project, run, base, model.memory))
