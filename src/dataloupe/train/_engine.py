"""The training engine: a function over plain data (sample arrays, a recipe, a project).

Example:
    >>> from dataloupe.project import Project
    >>> from dataloupe.train import load_recipe, train
    >>> info = train(Project.open(), "cm-train", "cm-test",
    ...              load_recipe("chihuahua-muffin-resnet18", ["epochs=2", "image_size=64"]), run="a")  # doctest: +SKIP
    >>> info["best_val_top1"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dataloupe.data import (AugmentConfig, ShardSampler, WeightedEpochSampler, check_readable, close_loaders,
                            fragment_blocks, make_loader, missing_files, mix_transform, open_cache, open_store,
                            plan_loader, sample_transform)
from dataloupe.models import amp_dtype, create_model
from dataloupe.project import DataloupeError, Project
from dataloupe import runs
from dataloupe.train import _runs
from dataloupe.train._checkpoint import atomic_save, load_checkpoint, model_checkpoint
from dataloupe.train._distributed import DistContext, init_distributed, shutdown_distributed
from dataloupe.train._dynamics import Dynamics
from dataloupe.train._epoch import (Consistency, StepOptions, WeightEMA, consistency_configs, evaluate,
                                    prior_bias, recompute_batchnorm, train_one_epoch)
from dataloupe.train._inputs import TrainData, load_train_data
from dataloupe.train._model_init import check_weight_sources, choose_normalisation, init_weights, small_input_for
from dataloupe.train._plots import plot_history
from dataloupe.train._progress import Progress
from dataloupe.train._recipe import Recipe, build_recipe, load_recipe, parse_overrides
from dataloupe.train._schedules import Schedule, build_optimizer, current_lr
from dataloupe.train._stats import EpochStats


@dataclass
class Setup:
    """Everything built from a recipe before the first epoch."""

    model: nn.Module  # possibly DDP-wrapped / compiled
    raw: nn.Module  # the unwrapped Classifier (checkpoints)
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    train_loader: object
    val_loader: object
    sampler: WeightedEpochSampler
    mix: object
    opts: StepOptions
    small_input: bool
    num_train: int
    consistency: Consistency | None = None
    unlabeled_batches: object = None  # the consistency loader's running iterator (across epochs)
    ema: WeightEMA | None = None  # weight average: evaluated, checkpointed and the consistency teacher
    pool_loader: object = None  # the undefined rows in order, sharded (unlabeled_prior_match)
    pool_prior: torch.Tensor | None = None  # (K,) what the model's mean prediction on them is matched to
    swa: torch.optim.swa_utils.AveragedModel | None = None  # SWA: the trained weights at each SWA epoch's end
    bn_loader: object = None  # SWA: every training row in order (labeled and undefined), for its BatchNorm statistics
    swa_final: bool = False  # the SWA average is complete: it is the model from now on
    weights: dict = field(default_factory=dict)  # recipe key ("pretrained", "continue_from") -> WeightsReport
    normalisation: str = "recipe"  # where opts.mean/std come from: "recipe" or a key of weights

    @property
    def rotation_head(self) -> nn.Module | None:
        """The rotation task's head (``unlabeled_rotation``): trained and resumed with the run,
        never part of the saved model."""
        return self.consistency.rotation_head if self.consistency is not None else None

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and saved: the weight average when the recipe keeps one."""
        if self.swa_final:
            return self.swa.module
        return self.ema.module if self.ema is not None else self.model

    @property
    def saved_model(self) -> nn.Module:
        if self.swa_final:
            return self.swa.module
        return self.ema.module if self.ema is not None else self.raw

    def __post_init__(self) -> None:
        if self.consistency is not None:
            self.unlabeled_batches = self.consistency.batches()

    def close(self) -> None:
        """Stop every loader's workers (the run is over, or failed)."""
        if self.unlabeled_batches is not None:
            self.unlabeled_batches.close()
        close_loaders(self.train_loader, self.val_loader, self.pool_loader, self.bn_loader,
                      self.consistency.loader if self.consistency is not None else None)


def balanced_weights(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row weights rescaled so that every class carries the same total (a row keeps its share
    within its class): a labeled set skewed to the easy classes is drawn class-balanced."""
    labels, weights = np.asarray(labels), np.asarray(weights, dtype=np.float64)
    totals = np.bincount(labels, weights=weights)
    present = totals[labels]
    return np.where(present > 0, weights / np.where(present > 0, present, 1.0), 0.0)


def alignment_prior(labels: np.ndarray, weights: np.ndarray, k: int, mode: str = "labeled") -> torch.Tensor:
    """``(k,)`` class prior that distribution alignment pulls the guesses to: the labeled rows'
    weighted class shares, or uniform (``mode="uniform"``, for a labeled set known to be skewed)."""
    if mode == "uniform":
        return torch.full((k,), 1.0 / k)
    prior = torch.bincount(torch.as_tensor(labels), weights=torch.as_tensor(weights, dtype=torch.float64),
                           minlength=k).float()
    return prior / prior.sum()


def build_setup(project: Project, data: TrainData, recipe: Recipe, ctx: DistContext, train_set, val_set) -> Setup:
    """Model, optimizer, schedule and loaders for ``recipe`` on this process."""
    if recipe.batch_size % ctx.world_size:
        raise DataloupeError(f"batch_size {recipe.batch_size} is not divisible by {ctx.world_size} processes")
    cuda = ctx.device.type == "cuda"
    per_rank = recipe.batch_size // ctx.world_size
    small = small_input_for(recipe)
    torch.manual_seed(recipe.seed)
    raw = create_model(recipe.model, len(data.classes), small_input=small)
    weights = init_weights(project, recipe, raw, data.classes)
    mean, std, norm_source = choose_normalisation(recipe, weights)
    recipe = dataclasses.replace(recipe, mean=mean, std=std)  # everything below normalises with these
    raw.to(ctx.device)
    channels_last = recipe.channels_last
    if channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    model: nn.Module = raw
    if recipe.compile:
        model = torch.compile(model)
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.local_rank] if cuda else None)
    aug = AugmentConfig.from_recipe(recipe)
    batched = recipe.augment == "batched" or (recipe.augment == "auto" and cuda)
    train_tf = sample_transform(aug, only_autoaugment=batched)
    all_rows = len(data.train) + len(data.val)
    plan = plan_loader(all_rows, recipe.image_size, loader=recipe.loader, cache_max_gb=recipe.cache_max_gb,
                       num_workers=recipe.num_workers, cuda=cuda, world_size=ctx.world_size, decode=recipe.decode,
                       per_image_transform=train_tf is not None, large="store")
    caches = _open_pixels(project, data, recipe, plan, ctx, used=(train_set, val_set))
    blocks = fragment_blocks(caches[0], train_set) if plan.mode == "store" else None
    draw_weights = balanced_weights(train_set.labels, train_set.weights) if recipe.balance_classes else train_set.weights
    sampler = WeightedEpochSampler(draw_weights, num_replicas=ctx.world_size, rank=ctx.rank, seed=recipe.seed,
                                   num_samples=recipe.epoch_samples, blocks=blocks)
    drop_last = len(sampler) * ctx.world_size >= 2 * recipe.batch_size
    train_loader = make_loader(train_set, plan, image_size=recipe.image_size, batch_size=per_rank, cache=caches[0],
                               transform=train_tf, sampler=sampler,
                               drop_last=drop_last, seed=recipe.seed + ctx.rank, pin_memory=cuda)

    def in_order(rows, cache):  # every row once, sharded over processes: evaluation, prior match, SWA statistics
        return make_loader(rows, plan, image_size=recipe.image_size, batch_size=recipe.val_batch_size or 2 * per_rank,
                           cache=cache, sampler=ShardSampler(len(rows), num_replicas=ctx.world_size, rank=ctx.rank),
                           pin_memory=cuda)

    val_loader = in_order(val_set, caches[1])
    consistency = None
    pool = data.train.subset((data.train.labels < 0) & (data.train.weights > 0))  # the undefined rows
    # The pool is drawn for consistency training, or for the rotation task alone (S4L-Rotation:
    # a self-supervised loss on the pool that needs no guesses, so no teacher can lock in its mistakes).
    if recipe.unlabeled_weight > 0 or recipe.unlabeled_rotation > 0:
        if len(pool):
            draw = torch.utils.data.RandomSampler(range(len(pool)), replacement=True, num_samples=len(pool),
                                                  generator=torch.Generator().manual_seed(recipe.seed + 7 + ctx.rank))
            u_batch = (per_rank * recipe.unlabeled_ratio if recipe.unlabeled_weight > 0
                       else recipe.unlabeled_rotation_images or per_rank)  # rotation alone: only the turned images
            u_loader = make_loader(pool, plan, image_size=recipe.image_size,
                                   batch_size=u_batch, cache=caches[0], sampler=draw,
                                   drop_last=len(pool) >= u_batch, pin_memory=cuda)
            weak, strong = consistency_configs(aug, recipe.unlabeled_strong_scale,
                                               recipe.unlabeled_weak_scale)
            k = len(data.classes)
            prior = alignment_prior(train_set.labels, train_set.weights, k, recipe.unlabeled_da_prior)
            consistency = Consistency(u_loader, weak, strong, recipe.unlabeled_weight, recipe.unlabeled_threshold,
                                      num_rows=len(pool), num_classes=k, adaptive=recipe.unlabeled_adaptive,
                                      align=recipe.unlabeled_da, temperature=recipe.unlabeled_temperature,
                                      prior=prior, views=recipe.unlabeled_guess_views,
                                      rampup=recipe.unlabeled_rampup, mixup=recipe.unlabeled_mixup,
                                      da_momentum=recipe.unlabeled_da_momentum, da_debias=recipe.unlabeled_da_debias,
                                      rotation=recipe.unlabeled_rotation,
                                      rotation_images=recipe.unlabeled_rotation_images or per_rank)
            if recipe.unlabeled_rotation > 0:
                consistency.rotation_head = nn.Linear(raw.num_features, 4).to(ctx.device)
        else:
            ctx.print("note: unlabeled_weight or unlabeled_rotation > 0 but the training table has no undefined rows"
                      " with weight > 0; training on labeled rows only")
    pool_loader = pool_prior = None
    if recipe.unlabeled_prior_match != "none":
        if len(pool):
            pool_loader = in_order(pool, caches[0])
            pool_prior = alignment_prior(train_set.labels, train_set.weights, len(data.classes),
                                         recipe.unlabeled_prior_match)
        else:
            ctx.print("note: unlabeled_prior_match is set but the training table has no undefined rows with"
                      " weight > 0; the classifier is left as trained")
    swa = bn_loader = None
    if recipe.swa_epochs:
        swa = torch.optim.swa_utils.AveragedModel(raw)
        # labeled and undefined rows: the images the model trains on
        bn_loader = in_order(data.train.subset(data.train.weights > 0), caches[0])
    optimizer = build_optimizer(raw, recipe.optimizer, lr=recipe.effective_lr, momentum=recipe.momentum,
                                nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    head = consistency.rotation_head if consistency is not None else None
    if head is not None:  # trained alongside, not in the model
        optimizer.add_param_group({"params": [head.weight], "weight_decay": recipe.weight_decay})
        optimizer.add_param_group({"params": [head.bias], "weight_decay": 0.0})
    schedule = Schedule(recipe.scheduler, optimizer, lr=recipe.effective_lr,
                        epochs=recipe.epochs - recipe.swa_epochs, steps_per_epoch=len(train_loader),
                        warmup_fraction=recipe.warmup_fraction, min_lr=recipe.min_lr,
                        plateau_factor=recipe.plateau_factor, plateau_patience=recipe.plateau_patience,
                        hold_lr=recipe.effective_swa_lr if recipe.swa_epochs else None)
    opts = StepOptions(ctx.device, tuple(recipe.mean), tuple(recipe.std), amp_dtype(recipe.amp, ctx.device), channels_last,
                       augment=aug if batched else None, tta_hflip=recipe.tta_hflip)
    return Setup(model, raw, optimizer, schedule, train_loader, val_loader, sampler,
                 mix_transform(aug, len(data.classes)), opts, small, len(train_set), consistency,
                 weights=weights, normalisation=norm_source,
                 ema=(WeightEMA(raw, recipe.ema_decay, recipe.ema_warmup, recipe.ema_buffers == "average")
                      if recipe.ema_decay > 0 else None),
                 pool_loader=pool_loader, pool_prior=pool_prior, swa=swa, bn_loader=bn_loader)


def _open_pixels(project: Project, data: TrainData, recipe: Recipe, plan, ctx: DistContext, *,
                 used: tuple | None = None) -> list:
    """The decoded caches or training stores of (train, val), built once by the primary process.

    ``used``: the (train, val) rows the run reads; unreadable images among them are warned
    about, and are an error beyond a small share (``check_readable``)."""
    if plan.mode == "stream":
        return [None, None]
    out = []
    for samples in (data.train, data.val):
        t0 = time.perf_counter()
        if plan.mode == "cache":
            found = open_cache(samples, recipe.image_size, project.cache_dir, primary=ctx.is_primary(),
                               barrier=ctx.barrier)
        else:
            found = open_store(samples, project.cache_dir, short_side=recipe.store_short_side or recipe.image_size,
                               quality=recipe.store_quality, primary=ctx.is_primary(), barrier=ctx.barrier)
        if time.perf_counter() - t0 > 5:
            ctx.print(f"prepared {len(samples)} images ({plan.mode}) into {found.path}"
                      f" in {time.perf_counter() - t0:.0f}s")
        rows = used[len(out)] if used is not None else samples
        ctx.print(*check_readable(rows, found.failed, data.train_table if not out else data.val_table))
        out.append(found)
    return out


def _report_weights(s: Setup, writer: _runs.RunWriter) -> None:
    """Print one line per weights load and record the reports and the normalisation in ``run.json``."""
    writer.print(*(f"{key}: {report.summary()}" for key, report in s.weights.items()))
    mean, std = list(s.opts.mean), list(s.opts.std)
    if s.normalisation != "recipe":
        writer.print(f"normalisation: mean {mean} std {std} from the {s.normalisation} weights")
    fields = {key: report.to_dict() for key, report in s.weights.items()}
    writer.update(**fields, normalisation={"mean": mean, "std": std, "source": s.normalisation})


def _provenance_tables(data: TrainData) -> dict:
    return {"train_table": data.train_table, "train_revision": data.train_revision, "val_table": data.val_table,
            "val_revision": data.val_revision, "train_content_key": data.train.content_key,
            "val_content_key": data.val.content_key, "classes": data.classes}


def _provenance(data: TrainData, recipe: Recipe, run: str, ctx: DistContext) -> dict:
    return {
        "run": run, "status": "running", "recipe": recipe.name, "train_table": data.train_table,
        "train_revision": data.train_revision, "val_table": data.val_table, "val_revision": data.val_revision,
        "train_content_key": data.train.content_key, "val_content_key": data.val.content_key,
        "classes": data.classes, "seed": recipe.seed, "version": runs.package_version(),
        "hardware": dict(_runs.hardware(), world_size=ctx.world_size, device=str(ctx.device)),
        "created": runs.now(), "epochs": recipe.epochs, "epochs_done": 0, "best_val_top1": None,
        "best_epoch": None, "model": recipe.model, "image_size": recipe.image_size,
        "num_train": int(data.train.trainable.sum()), "num_val": int(data.val.trainable.sum()),
    }


def check_resumable(info: dict, data: TrainData, *, force: bool) -> list[str]:
    """Refuse to resume when the tables changed underneath the run, unless ``force``; returns the changes."""
    changes = []
    for side in ("train", "val"):
        samples = getattr(data, side)
        now = (getattr(data, f"{side}_table"), getattr(data, f"{side}_revision"), samples.content_key)
        then = (info.get(f"{side}_table"), info.get(f"{side}_revision"), info.get(f"{side}_content_key"))
        if now != then:
            changes.append(f"{side}: {then[0]}@{then[1]} -> {now[0]}@{now[1]}")
    if list(info.get("classes") or data.classes) != list(data.classes):
        changes.append(f"classes {info.get('classes')} -> {data.classes}")
    if changes and not force:
        raise DataloupeError(f"run {info['run']}: tables changed since it started ({'; '.join(changes)});"
                             " refusing to resume (pass --force to resume anyway)")
    return changes


def _start_run(project, data, recipe, run, ctx, *, resume: bool, force: bool):
    """The run folder's primary-only writer, after the run's start is written (or checked, on resume)."""
    folder, resume, info = _runs.resume_target(project, run, resume, pretrain=False, force=force)
    writer = _runs.RunWriter(folder, ctx.is_primary())
    if resume:
        changes = check_resumable(info, data, force=force)
        if changes:  # forced: the run now continues on the new revisions; say so
            forced = info.get("forced_resumes", []) + [{"after_epoch": info.get("epochs_done", 0), "changes": changes}]
            writer.update(forced_resumes=forced, **_provenance_tables(data))
    ctx.barrier()
    if not resume:
        writer.start(_provenance(data, recipe, run, ctx), recipe)
    return writer


def train_samples(project: Project, data: TrainData, recipe: Recipe, *, run: str, resume: bool = False,
                  force: bool = False, ctx: DistContext | None = None, tty: bool | None = None) -> dict:
    """Train ``recipe`` on ``data`` into ``runs/<run>/``; returns the final ``run.json`` dict.

    Trains on labeled rows with weight > 0 (weights are sampling weights); evaluates on
    the validation rows with a label and weight > 0. Only the primary process writes.
    """
    ctx = ctx or init_distributed(recipe.device)
    train_set = data.train.subset(data.train.trainable)
    val_set = data.val.subset(data.val.trainable)
    if len(train_set) == 0:
        raise DataloupeError(f"training table {data.train_table}@{data.train_revision} has no labeled rows with"
                             " weight > 0 to train on")
    if len(val_set) == 0:
        raise DataloupeError(f"validation table {data.val_table}@{data.val_revision} has no labeled rows with"
                             " weight > 0")
    check_weight_sources(project, recipe)  # before the run folder exists: a typo leaves nothing behind
    for used, ref in ((train_set, f"{data.train_table}@{data.train_revision}"),
                      (val_set, f"{data.val_table}@{data.val_revision}")):
        check_readable(used, missing_files(used), ref)  # a deleted image folder stops here, before the run
    with _runs.run_claim(runs.run_dir(project, run), ctx, run):  # one process per run, released when it ends
        return _train_claimed(project, data, recipe, run=run, resume=resume, force=force, ctx=ctx, tty=tty,
                              train_set=train_set, val_set=val_set)


def _train_claimed(project: Project, data: TrainData, recipe: Recipe, *, run: str, resume: bool, force: bool,
                   ctx: DistContext, tty, train_set, val_set) -> dict:
    writer = _start_run(project, data, recipe, run, ctx, resume=resume, force=force)
    folder = writer.folder
    try:
        s = build_setup(project, data, recipe, ctx, train_set, val_set)
    except BaseException:
        writer.update(status="failed")
        raise
    _report_weights(s, writer)
    start_epoch, best = 1, -1.0
    dyn = Dynamics(train_set.ids, recipe.epochs)
    if resume and (folder / "checkpoints" / "last.pt").is_file():
        last = load_checkpoint(folder / "checkpoints" / "last.pt")
        rotating = s.rotation_head is not None
        if rotating != ("rotation_head" in last):  # the optimizer's parameter groups would not match
            was = "without" if rotating else "with"
            raise DataloupeError(f"run {folder.name!r} was trained {was} the rotation task (unlabeled_rotation);"
                                 " resume it with the setting it started with, or start a new run (--run NAME)")
        s.raw.load_state_dict(last.get("trained_model", last["model"]))
        if s.ema is not None and "ema" in last:
            s.ema.load_state_dict(last["ema"])
        if s.swa is not None and "swa" in last:
            s.swa.load_state_dict(last["swa"])
        if rotating:
            s.rotation_head.load_state_dict(last["rotation_head"])
        s.optimizer.load_state_dict(last["optimizer"])
        s.schedule.resume(last["scheduler"], int(last["epoch"]) * len(s.train_loader))
        start_epoch, best = int(last["epoch"]) + 1, float(last.get("best_val_top1", -1.0))
        dyn = Dynamics.load(folder / "dynamics.npz", train_set.ids, recipe.epochs, upto=int(last["epoch"]))
        writer.truncate_history(int(last["epoch"]))
    elif resume:
        writer.truncate_history(0)
    writer.update(status="running", epochs=recipe.epochs, resumed=runs.now() if resume else None)
    if resume:
        writer.save_recipe(recipe)
    k = len(data.classes)
    try:
        with writer.marking_status():
            for epoch in range(start_epoch, recipe.epochs + 1):
                best = _one_epoch(s, ctx, recipe, data, writer, epoch, best, dyn, k, tty)
    finally:
        s.close()
    ctx.barrier()
    return runs.read_run_at(folder)


def _one_epoch(s: Setup, ctx: DistContext, recipe: Recipe, data: TrainData, writer: _runs.RunWriter, epoch: int,
               best: float, dyn: Dynamics, k: int, tty) -> float:
    torch.manual_seed(recipe.seed * 1_000_003 + epoch * 7919 + ctx.rank * 104_729)  # augmentation draws
    s.sampler.set_epoch(epoch)
    bar = Progress(len(s.train_loader), f"epoch {epoch}/{recipe.epochs}", enabled=writer.primary,
                   every=recipe.log_every, tty=tty)
    tr = train_one_epoch(s.model, s.train_loader, optimizer=s.optimizer, schedule=s.schedule, opts=s.opts,
                         num_samples=s.num_train, label_smoothing=recipe.label_smoothing, mix=s.mix,
                         grad_clip=recipe.grad_clip, progress=bar, consistency=s.consistency,
                         unlabeled=s.unlabeled_batches, ema=s.ema)
    if s.swa is not None and epoch > recipe.epochs - recipe.swa_epochs:
        s.swa.update_parameters(s.raw)
        if epoch == recipe.epochs:
            recompute_batchnorm(s.swa.module, s.bn_loader, opts=s.opts, reduce_sum=ctx.all_reduce_sum,
                                world_size=ctx.world_size)
            s.swa_final = True
            ctx.print(f"SWA: the final model is the average of the last {recipe.swa_epochs} epochs' weights"
                      f" (learning rate {recipe.effective_swa_lr:g}), BatchNorm statistics recomputed")
    if epoch == recipe.epochs and s.pool_loader is not None:  # before the last evaluation and checkpoint
        bias = prior_bias(s.saved_model, s.pool_loader, opts=s.opts, prior=s.pool_prior,
                          reduce_sum=ctx.all_reduce_sum)
        with torch.no_grad():
            s.saved_model.head.bias += bias.to(s.saved_model.head.bias)
        ctx.print("matched the mean prediction on the undefined rows to the "
                  f"{recipe.unlabeled_prior_match} prior: logit offsets {[round(float(b), 3) for b in bias]}")
    evaluated = epoch % recipe.eval_every == 0 or epoch == recipe.epochs
    ev = evaluate(s.eval_model, s.val_loader, opts=s.opts, num_classes=k) if evaluated else None
    stats = EpochStats.reduce(ctx, tr, ev)
    check_finite_losses(stats.train_loss, stats.val_loss, epoch=epoch, lr=recipe.effective_lr)
    if evaluated:
        s.schedule.epoch_end(stats.val_loss)
    unlabeled_used = None
    if s.consistency is not None and s.consistency.weight > 0:  # (the rotation task alone guesses nothing)
        used = ctx.all_reduce_sum(torch.tensor([tr["unlabeled_used"], tr["unlabeled_seen"]], dtype=torch.float64))
        unlabeled_used = float(used[0] / max(1.0, float(used[1])))
    record = stats.record(epoch, num_classes=k, lr=current_lr(s.optimizer), unlabeled_used=unlabeled_used)
    dyn.record(epoch, stats.margin_sum, stats.margin_count)
    if recipe.checkpoint == "last":  # validation labels choose nothing: the last epoch is the model
        improved = epoch == recipe.epochs
        best = record["val_top1"] if improved else best
    else:
        improved = evaluated and record["val_top1"] > best
        best = max(best, record.get("val_top1", best))
    writer.call(_write_epoch, s, recipe, data, writer.folder, epoch, record, best, improved, dyn, plot=evaluated)
    ctx.barrier()
    return best


def check_finite_losses(train_loss: float, val_loss: float, *, epoch: int, lr: float) -> None:
    """Stop a diverged run before anything of the epoch is written (no checkpoint of NaN weights)."""
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        raise DataloupeError(f"training diverged in epoch {epoch}: train loss {train_loss:g}, val loss {val_loss:g};"
                             f" nothing of this epoch was saved. Lower lr (now {lr:g}) and start again, or"
                             " --resume from the last good epoch with a lower lr=...")


def _write_epoch(s, recipe, data, folder, epoch, record, best, improved, dyn, *, plot: bool = True) -> None:
    runs.append_history(folder, record)
    dyn.save(folder / "dynamics.npz")
    meta = dict(model_name=recipe.model, classes=data.classes, image_size=recipe.image_size,
                small_input=s.small_input, mean=list(s.opts.mean), std=list(s.opts.std), epoch=epoch,
                tta_hflip=recipe.tta_hflip, amp=recipe.amp)
    if improved:
        atomic_save(model_checkpoint(s.saved_model, val_top1=record["val_top1"], **meta),
                    folder / "checkpoints" / "best.pt")
    last = model_checkpoint(s.saved_model, val_top1=record.get("val_top1"), **meta)
    last.update(optimizer=s.optimizer.state_dict(), scheduler=s.schedule.state_dict(), best_val_top1=best,
                rng_torch=torch.get_rng_state())
    if s.ema is not None or s.swa is not None:  # "model" is an average (what collect and serve load); resume needs
        last["trained_model"] = s.raw.state_dict()  # the trained weights and the average(s) as well
    if s.ema is not None:
        last["ema"] = s.ema.state_dict()
    if s.swa is not None:
        last["swa"] = s.swa.state_dict()
    if s.rotation_head is not None:
        last["rotation_head"] = s.rotation_head.state_dict()  # resume only: collect and serve never read it
    atomic_save(last, folder / "checkpoints" / "last.pt")
    best_epoch = epoch if improved else runs.read_run_at(folder).get("best_epoch")
    runs.update_run(folder, epochs_done=epoch, best_val_top1=best, best_epoch=best_epoch)
    if plot:  # with the validation pass (matplotlib costs more than a small epoch)
        plot_history(runs.read_history(folder), folder / "plots")
    line = " ".join(f"{k_}={v:.4g}" if isinstance(v, float) else f"{k_}={v}" for k_, v in record.items())
    print(line, flush=True)


def train(project: Project, train_table: str, val_table: str, recipe: Recipe | dict | str, *,
          overrides: list[str] | dict | None = None, run: str | None = None, resume: bool = False,
          force: bool = False, tty: bool | None = None) -> dict:
    """Train on table references ``TABLE[@REV]``; returns the run's ``run.json`` dict.

    Args:
        project: the project store.
        train_table, val_table: ``TABLE`` or ``TABLE@REV``.
        recipe: a :class:`Recipe`, a dict of recipe keys, or a recipe name / YAML path.
        overrides: ``key=value`` strings or a dict applied on top of ``recipe``.
        run: run name (default ``<recipe>-<n>``).
        resume: continue run ``run`` from its last checkpoint.
        force: resume even when the tables changed underneath.
    """
    if run is not None:
        runs.check_run_name(run)  # before anything is read or written
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    elif isinstance(recipe, dict):
        recipe = build_recipe(recipe)
    if overrides:
        recipe = build_recipe(parse_overrides(overrides) if isinstance(overrides, list) else overrides, base=recipe)
    ctx = init_distributed(recipe.device)
    try:
        data = load_train_data(project, train_table, val_table)
        if run is None:
            if resume:
                raise DataloupeError("--resume needs --run NAME")
            run = ctx.broadcast_object(runs.new_run_name(project, recipe.name) if ctx.is_primary() else None)
        info = train_samples(project, data, recipe, run=run, resume=resume, force=force, ctx=ctx, tty=tty)
        if recipe.collect:
            from dataloupe.train._collect import collect

            for ref in (f"{data.train_table}@{data.train_revision}", f"{data.val_table}@{data.val_revision}"):
                collect(project, run, ref, ctx=ctx)  # every process collects its shard
        return info
    finally:
        shutdown_distributed(ctx)
