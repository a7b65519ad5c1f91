"""Self-supervised pretraining: learn a backbone from every row of the given tables.

Every row with weight > 0 is seen once per epoch — labeled and undefined alike; labels
are never read for learning. They feed one number only, the per-epoch kNN monitor:
leave-one-out weighted kNN top-1 of the current backbone's embeddings on the labeled
rows (null when fewer than two classes are labeled). Self-supervised training has no
honest "best" epoch without labels, so ``checkpoints/best.pt`` is the latest backbone,
rewritten every epoch in the format ``train``'s ``pretrained=`` reads (architecture.md).

Example:
    >>> from dataloupe.project import Project
    >>> from dataloupe.train import pretrain
    >>> info = pretrain(Project.open(), ["cm-train"], {"method": "simclr", "epochs": 2, "image_size": 64},
    ...                 run="ssl")  # doctest: +SKIP
    >>> info["knn_top1"]  # doctest: +SKIP
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dataloupe.data import (SampleSet, ShardSampler, WeightedEpochSampler, batch_augment, check_readable, close_loaders,
                            make_loader, missing_files, open_cache, plan_loader)
from dataloupe.models import amp_dtype, create_model
from dataloupe.project import DataloupeError, Project
from dataloupe import runs
from dataloupe._fileio import write_json_atomic
from dataloupe.train import _runs
from dataloupe.train._checkpoint import atomic_save, load_checkpoint
from dataloupe.train._distributed import DistContext, init_distributed, shutdown_distributed
from dataloupe.train._model_init import small_input_for
from dataloupe.train._epoch import StepOptions, embed
from dataloupe.train._inputs import PretrainData, load_pretrain_data
from dataloupe.train._plots import plot_pretrain_history
from dataloupe.train._pretrain_config import PretrainConfig, build_pretrain_config, load_pretrain_config, \
    save_pretrain_config
from dataloupe.train._progress import Progress
from dataloupe.train._schedules import Schedule, build_optimizer, current_lr
from dataloupe.train._ssl_methods import SSLMethod, batched_views, build_method


def knn_top1(emb: torch.Tensor, labels: torch.Tensor, *, k: int = 20, temperature: float = 0.07,
             block: int = 1024) -> float | None:
    """Leave-one-out weighted kNN top-1 accuracy of ``emb (N, D)`` on ``labels (N,)``.

    Cosine similarity; each of the ``k`` nearest other rows votes for its label with
    weight ``exp(sim / temperature)`` (Wu et al., 2018; DINO's kNN monitor). None when
    fewer than two classes are present.
    """
    n = len(labels)
    if n < 2 or len(torch.unique(labels)) < 2:
        return None
    x = F.normalize(emb.float(), dim=1)
    labels = labels.to(x.device)
    k = min(k, n - 1)
    num_classes = int(labels.max()) + 1
    correct = 0
    for start in range(0, n, block):
        rows = torch.arange(start, min(start + block, n), device=x.device)
        sims = x[rows] @ x.T
        sims[torch.arange(len(rows), device=x.device), rows] = float("-inf")  # leave the row itself out
        top, nb = sims.topk(k, dim=1)
        votes = torch.zeros(len(rows), num_classes, device=x.device).scatter_add_(1, labels[nb],
                                                                                 (top / temperature).exp())
        correct += int((votes.argmax(1) == labels[rows]).sum())
    return correct / n


@dataclass
class PretrainSetup:
    """Everything built from the config before the first epoch."""

    model: nn.Module  # the method, possibly DDP-wrapped
    raw: SSLMethod  # unwrapped (checkpoints, momentum updates)
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loader: object
    sampler: WeightedEpochSampler
    opts: StepOptions
    small_input: bool
    dim: int
    knn_loader: object = None
    knn_labels: np.ndarray | None = None
    views: list | None = None  # augment=batched: one AugmentConfig per view, applied on the device


def _knn_sets(data: PretrainData, config: PretrainConfig) -> list[SampleSet]:
    """Labeled rows with weight > 0 of every table, at most ``knn_max_rows`` (a fixed random subset)."""
    sets = [s.subset((s.labels >= 0) & (s.weights > 0)) for s in data.samples]
    total = sum(len(s) for s in sets)
    if config.knn_max_rows and total > config.knn_max_rows:
        keep = np.zeros(total, dtype=bool)
        keep[np.random.default_rng(config.seed).choice(total, config.knn_max_rows, replace=False)] = True
        offsets = np.cumsum([0] + [len(s) for s in sets])
        sets = [s.subset(keep[offsets[i]:offsets[i + 1]]) for i, s in enumerate(sets)]
    return sets


def _batched(config: PretrainConfig, cuda: bool) -> bool:
    """Whether the views are drawn on the device (``augment``; ``auto``: on CUDA, where the
    per-image PIL steps would leave the GPU waiting)."""
    return config.augment == "batched" or (config.augment == "auto" and cuda)


def build_pretrain_setup(project: Project, data: PretrainData, config: PretrainConfig, ctx: DistContext,
                         learn: list[SampleSet]) -> PretrainSetup:
    """Backbone + method heads, optimizer, schedule and loaders for ``config`` on this process."""
    if config.batch_size % ctx.world_size:
        raise DataloupeError(f"batch_size {config.batch_size} is not divisible by {ctx.world_size} processes")
    cuda = ctx.device.type == "cuda"
    per_rank = config.batch_size // ctx.world_size
    small = small_input_for(config)
    torch.manual_seed(config.seed)
    clf = create_model(config.model, 1, small_input=small)  # the head is dropped: only .backbone is trained
    raw = build_method(config.method, clf.backbone, clf.num_features, distributed=ctx.distributed,
                       **config.method_keys()).to(ctx.device)
    channels_last = config.channels_last
    if channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    model: nn.Module = raw
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(raw, device_ids=[ctx.local_rank] if cuda else None)
    plan = plan_loader(sum(len(s) for s in data.samples), config.image_size, loader=config.loader,
                       cache_max_gb=config.cache_max_gb, num_workers=config.num_workers, cuda=cuda,
                       world_size=ctx.world_size)
    caches = [None] * len(data.samples)
    if plan.mode == "cache":
        for i, samples in enumerate(data.samples):
            t0 = time.perf_counter()
            caches[i] = open_cache(samples, config.image_size, project.cache_dir, primary=ctx.is_primary(),
                                   barrier=ctx.barrier)
            if ctx.is_primary() and time.perf_counter() - t0 > 5:
                print(f"decoded {len(samples)} images at {config.image_size} px into {caches[i].path}"
                      f" in {time.perf_counter() - t0:.0f}s", flush=True)
    n = sum(len(s) for s in learn)
    sampler = WeightedEpochSampler(np.ones(n), num_replicas=ctx.world_size, rank=ctx.rank, seed=config.seed)
    transform = raw.views_transform(input_size=config.image_size, mean=config.mean, std=config.std,
                                    min_scale=config.min_scale, cj_strength=config.cj_strength)
    views = None
    if _batched(config, cuda):
        views = batched_views(transform.transform)  # the loader then yields uint8 batches
    loader = make_loader(learn, plan, image_size=config.image_size, batch_size=per_rank, cache=caches,
                         transform=None if views else transform, sampler=sampler, seed=config.seed + ctx.rank,
                         pin_memory=cuda,
                         drop_last=len(sampler) % per_rank == 1)  # a lone last image cannot be compared or batch-normed
    opts = StepOptions(ctx.device, tuple(config.mean), tuple(config.std), amp_dtype(config.amp, ctx.device), channels_last)
    optimizer = build_optimizer(raw, config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    schedule = Schedule(config.scheduler, optimizer, lr=config.lr, epochs=config.epochs,
                        steps_per_epoch=len(loader), warmup_fraction=config.warmup_fraction, min_lr=config.min_lr)
    s = PretrainSetup(model, raw, optimizer, schedule, loader, sampler, opts, small, clf.num_features, views=views)
    labeled = _knn_sets(data, config) if config.knn_max_rows else []
    m = sum(len(x) for x in labeled)
    labels = np.concatenate([x.labels for x in labeled]) if labeled else np.zeros(0, dtype=np.int64)
    if len(np.unique(labels)) >= 2:
        s.knn_labels = labels
        s.knn_loader = make_loader(labeled, plan, image_size=config.image_size, batch_size=2 * per_rank,
                                   cache=caches, sampler=ShardSampler(m, num_replicas=ctx.world_size, rank=ctx.rank),
                                   pin_memory=cuda)
    return s


def _provenance(data: PretrainData, config: PretrainConfig, run: str, ctx: DistContext, learn) -> dict:
    return {
        "run": run, "kind": "pretrain", "status": "running", "method": config.method,
        "recipe": f"pretrain-{config.method}", "tables": data.tables, "classes": data.classes, "seed": config.seed,
        "version": runs.package_version(),
        "hardware": dict(_runs.hardware(), world_size=ctx.world_size, device=str(ctx.device)),
        "created": runs.now(), "epochs": config.epochs, "epochs_done": 0, "knn_top1": None,
        "model": config.model, "image_size": config.image_size, "num_rows": int(sum(len(s) for s in learn)),
    }


def _start_run(project, data, config, run, ctx, *, resume: bool, learn):
    folder, resume, info = _runs.resume_target(project, run, resume, pretrain=True)
    if resume:
        then = [(t["table"], t["revision"], t["content_key"]) for t in info["tables"]]
        now = [(t["table"], t["revision"], t["content_key"]) for t in data.tables]
        if then != now:
            said = ", ".join(f"{t[0]}@{t[1]}" for t in then)
            raise DataloupeError(f"run {run}: started on {said}, now given"
                                 f" {', '.join(f'{t[0]}@{t[1]}' for t in now)}; refusing to resume on other data")
        if info.get("method") != config.method:
            raise DataloupeError(f"run {run} pretrains with {info.get('method')};"
                                 f" cannot resume it with {config.method}")
    else:
        info = _provenance(data, config, run, ctx, learn)
    ctx.barrier()
    if ctx.is_primary():
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_pretrain_config(config, folder / "recipe.yaml")
        if not resume:
            write_json_atomic(folder / "run.json", info)
    return folder, resume


def backbone_checkpoint(raw: SSLMethod, config: PretrainConfig, small_input: bool, epoch: int) -> dict:
    """``best.pt``: the backbone keys only, plus what ``train``'s ``pretrained=`` needs (architecture.md)."""
    return {
        "model": {f"backbone.{k}": v.detach().cpu().clone() for k, v in raw.backbone.state_dict().items()},
        "kind": "pretrain",
        "model_name": config.model,
        "image_size": int(config.image_size),
        "small_input": bool(small_input),
        "mean": [float(v) for v in config.mean],
        "std": [float(v) for v in config.std],
        "method": config.method,
        "epoch": int(epoch),
        "amp": config.amp,
    }


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    # lightly's blur and solarisation draw from numpy's global generator, its other view
    # transforms from torch's: both are seeded per epoch so runs (and resumes) repeat.
    s = (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**32
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def _knn_monitor(s: PretrainSetup, ctx: DistContext, config: PretrainConfig) -> float | None:
    """kNN top-1 of the current backbone on the labeled rows (None when not measured)."""
    if s.knn_loader is None:
        return None
    emb = embed(s.raw.backbone, s.knn_loader, opts=s.opts, num_rows=len(s.knn_labels), emb_dim=s.dim)
    emb = ctx.all_reduce_sum(torch.from_numpy(emb)).to(ctx.device)  # each process embedded its shard
    return knn_top1(emb, torch.from_numpy(s.knn_labels), k=config.knn_k)


def _one_epoch(s: PretrainSetup, ctx: DistContext, config: PretrainConfig, folder: Path, epoch: int, tty) -> None:
    _seed_epoch(config.seed, epoch, ctx.rank)
    s.sampler.set_epoch(epoch)
    steps = len(s.loader)
    bar = Progress(steps, f"epoch {epoch}/{config.epochs}", enabled=ctx.is_primary(), every=config.log_every, tty=tty)
    s.model.train()
    loss_acc = torch.zeros((), device=ctx.device, dtype=torch.float64)
    count, step, total = 0, (epoch - 1) * steps, config.epochs * steps
    start = time.perf_counter()
    for batch, _labels, _ in s.loader:  # labels are never read for learning
        if s.views is not None:  # augment=batched: every view drawn from the uint8 batch on the device
            pixels = s.opts.pixels(batch)
            views = [batch_augment(pixels, cfg) for cfg in s.views]
        else:
            views = [v.to(ctx.device, non_blocking=True) for v in batch]
        if s.opts.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with s.opts.autocast():
            loss = s.model(views)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.raw.after_backward(epoch - 1)
        s.optimizer.step()
        s.schedule.step()
        step += 1
        s.raw.after_step(step, total)
        n = len(views[0])
        loss_acc += loss.detach().double() * n
        count += n
        bar.update(n, loss.detach())
    bar.close()
    secs = time.perf_counter() - start
    t0 = time.perf_counter()
    knn = _knn_monitor(s, ctx, config)
    loss_sum, images, seconds = ctx.all_reduce_sum(torch.tensor([float(loss_acc), count, secs])).tolist()
    record = {"epoch": epoch, "loss": loss_sum / max(images, 1), "knn_top1": knn, "lr": current_lr(s.optimizer),
              "images": int(images), "seconds": seconds / ctx.world_size,
              "images_per_s": images / max(seconds / ctx.world_size, 1e-9), "knn_seconds": time.perf_counter() - t0}
    if not np.isfinite(record["loss"]):
        raise DataloupeError(f"pretraining loss is {record['loss']} in epoch {epoch}; lower lr (now {config.lr})"
                             " and resume from the last checkpoint with --resume lr=...")
    if ctx.is_primary():
        _write_epoch(s, config, folder, record)
    ctx.barrier()


def _write_epoch(s: PretrainSetup, config: PretrainConfig, folder: Path, record: dict) -> None:
    epoch = record["epoch"]
    runs.append_history(folder, record)  # before last.pt: a resume truncates history to last.pt's epoch
    atomic_save(backbone_checkpoint(s.raw, config, s.small_input, epoch), folder / "checkpoints" / "best.pt")
    state = s.raw.state_dict()
    extra = {k: b.detach().cpu() for k, b in s.raw.named_buffers() if k not in state}  # e.g. MoCo's memory bank
    atomic_save({"model": {k: v.detach().cpu() for k, v in state.items()}, "buffers": extra, "kind": "pretrain",
                 "method": config.method, "model_name": config.model, "epoch": epoch,
                 "optimizer": s.optimizer.state_dict(), "scheduler": s.schedule.state_dict()},
                folder / "checkpoints" / "last.pt")
    runs.update_run(folder, epochs_done=epoch, knn_top1=record["knn_top1"])
    plot_pretrain_history(runs.read_history(folder), folder / "plots")
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), flush=True)


def pretrain_samples(project: Project, data: PretrainData, config: PretrainConfig, *, run: str,
                     resume: bool = False, ctx: DistContext | None = None, tty: bool | None = None) -> dict:
    """Pretrain on ``data`` into ``runs/<run>/``; returns the final ``run.json`` dict (primary writes)."""
    ctx = ctx or init_distributed(config.device)
    learn = [s.subset(s.weights > 0) for s in data.samples]
    n = sum(len(s) for s in learn)
    if n < 2:
        raise DataloupeError(f"tables {', '.join(t['table'] for t in data.tables)} have {n} row(s) with weight > 0;"
                             " pretraining needs at least 2")
    for used, t in zip(learn, data.tables):  # a deleted image folder stops here, before the run
        check_readable(used, missing_files(used), f"{t['table']}@{t['revision']}")
    with _runs.run_claim(runs.run_dir(project, run), ctx, run):  # one process per run
        return _pretrain_claimed(project, data, config, run=run, resume=resume, ctx=ctx, tty=tty, learn=learn)


def _pretrain_claimed(project: Project, data: PretrainData, config: PretrainConfig, *, run: str, resume: bool,
                      ctx: DistContext, tty, learn) -> dict:
    folder, resume = _start_run(project, data, config, run, ctx, resume=resume, learn=learn)
    s = build_pretrain_setup(project, data, config, ctx, learn)
    primary = ctx.is_primary()
    start_epoch = 1
    last_path = folder / "checkpoints" / "last.pt"
    if resume and last_path.is_file():
        last = load_checkpoint(last_path)
        s.raw.load_state_dict(last["model"])
        for name, value in last.get("buffers", {}).items():
            s.raw.get_buffer(name).copy_(value)
        s.optimizer.load_state_dict(last["optimizer"])
        s.schedule.resume(last["scheduler"], int(last["epoch"]) * len(s.loader))
        start_epoch = int(last["epoch"]) + 1
    start_knn = _knn_monitor(s, ctx, config) if start_epoch == 1 else None  # the baseline: random init
    if primary:
        if resume:
            runs.truncate_history(folder, start_epoch - 1)
        extra = {"knn_top1_start": start_knn} if start_epoch == 1 else {}
        runs.update_run(folder, status="running", epochs=config.epochs, resumed=runs.now() if resume else None,
                         num_knn_rows=0 if s.knn_labels is None else len(s.knn_labels),
                         augment="lightly" if s.views is None else "batched", **extra)
    try:
        with _runs.marking_status(folder, primary):
            for epoch in range(start_epoch, config.epochs + 1):
                _one_epoch(s, ctx, config, folder, epoch, tty)
    finally:
        close_loaders(s.loader, s.knn_loader)  # not left to interpreter exit (see close_loaders)
    ctx.barrier()
    return runs.read_run_at(folder)


def _config_for(project: Project, config, overrides, run: str | None, resume: bool) -> tuple[PretrainConfig, dict]:
    """The config to run with and the saved ``run.json`` (``{}`` unless resuming a started run)."""
    info: dict = {}
    base = None
    if resume:
        if not run:
            raise DataloupeError("--resume needs --run NAME")
        folder = runs.run_dir(project, run)
        if (folder / "run.json").is_file():
            info = runs.read_run(project, run)
            if info.get("kind") != "pretrain":
                raise DataloupeError(f"run {run!r} is a training run, not a pretrain run: resume it with"
                                     f" `dataloupe train --run {run} --resume`")
            base = load_pretrain_config(folder / "recipe.yaml")
    if isinstance(config, PretrainConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = build_pretrain_config(config, base=base)
    else:
        cfg = load_pretrain_config(config, base=base)
    if overrides:
        cfg = load_pretrain_config(None, overrides, base=cfg)
    return cfg, info


def pretrain(project: Project, tables: list[str] | None, config: PretrainConfig | dict | str | Path | None = None,
             *, overrides: list[str] | dict | None = None, run: str | None = None, resume: bool = False,
             tty: bool | None = None) -> dict:
    """Self-supervised pretraining of a backbone on ``tables``; returns the run's ``run.json`` dict.

    Args:
        project: the project store.
        tables: ``TABLE`` or ``TABLE@REV`` references; every row with weight > 0 is used,
            undefined rows included. On resume, None means the run's own revisions.
        config: a :class:`PretrainConfig`, a dict of keys, a YAML path, or None (defaults;
            on resume the run's saved config).
        overrides: ``key=value`` strings or a dict applied on top of ``config``.
        run: run name (default ``<method>-<n>``).
        resume: continue run ``run`` from ``checkpoints/last.pt``.
        tty: progress bar (True) or plain lines (False); default: whether stderr is a terminal.
    """
    if run is not None:
        runs.check_run_name(run)  # before anything is read or written
    cfg, info = _config_for(project, config, overrides, run, resume)
    refs = list(tables) if tables else [f"{t['table']}@{t['revision']}" for t in info.get("tables", [])]
    ctx = init_distributed(cfg.device)
    try:
        data = load_pretrain_data(project, refs)
        if run is None:
            run = ctx.broadcast_object(runs.new_run_name(project, cfg.method) if ctx.is_primary() else None)
        info = pretrain_samples(project, data, cfg, run=run, resume=resume, ctx=ctx, tty=tty)
        if cfg.collect:
            from dataloupe.train._collect import collect_embeddings

            for t in data.tables:  # every process collects its shard
                collect_embeddings(project, run, f"{t['table']}@{t['revision']}", ctx=ctx)
        return info
    finally:
        shutdown_distributed(ctx)
