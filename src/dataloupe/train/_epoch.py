"""One training epoch and one evaluation pass: functions over a model, a loader and options."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dataloupe.data import AugmentConfig, EncodedBatch, batch_augment, normalize_batch
from dataloupe.models import infer, infer_views, merge_views
from dataloupe.train._progress import Progress


@dataclass(frozen=True)
class StepOptions:
    """How batches become model inputs: device, normalisation, autocast, memory format."""

    device: torch.device
    mean: tuple
    std: tuple
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    augment: AugmentConfig | None = None  # batched on-device augmentation (training only)
    tta_hflip: bool = False  # evaluation averages the image and its horizontal mirror

    def pixels(self, images) -> torch.Tensor:
        """The uint8 batch on the device (encoded batches of the training store decoded there)."""
        if isinstance(images, EncodedBatch):
            return images.decode(self.device)
        return images.to(self.device, non_blocking=True)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pixels(images)
        x = normalize_batch(x, self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train_inputs(self, images: torch.Tensor) -> torch.Tensor:
        if self.augment is None:
            return self.inputs(images)
        x = batch_augment(self.pixels(images), self.augment)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def eval_forward(self, model: nn.Module, images: torch.Tensor, *, return_embedding: bool = False):
        """Eval-mode forward pass of one batch through :func:`dataloupe.models.infer`: logits (and
        embeddings), averaged over the mirror when ``tta_hflip``."""
        return next(infer(self._forward(model, return_embedding), [self.inputs(images)], tta=self.tta_hflip,
                          embedding=return_embedding))

    def infer_loader(self, model: nn.Module, loader, *, embedding: bool = False):
        """:func:`dataloupe.models.infer` over a loader's ``(images, labels, positions)`` batches:
        yields ``(logits, labels, positions)`` or ``(logits, embeddings, labels, positions)``."""
        return infer(self._forward(model, embedding),
                     ((self.inputs(images), labels, positions) for images, labels, positions in loader),
                     tta=self.tta_hflip, embedding=embedding)

    def infer_views_loader(self, model: nn.Module, loader):
        """:func:`dataloupe.models.infer_views` over a loader: yields ``(views, labels, positions)``,
        each view a ``(logits, embeddings)`` pair (the image, then its mirror with ``tta_hflip``)."""
        return infer_views(self._forward(model, True),
                           ((self.inputs(images), labels, positions) for images, labels, positions in loader),
                           tta=self.tta_hflip)

    def _forward(self, model: nn.Module, embedding: bool):
        def forward(x):
            with self.autocast():
                return model(x, return_embedding=True) if embedding else model(x)

        return forward

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


class WeightEMA:
    """Exponential moving average of a model's weights (Polyak averaging; the Mean Teacher and
    FixMatch teacher). Buffers (BatchNorm statistics) are copied, not averaged.

    The decay warms up as ``min(decay, (1 + n) / (warmup + n))`` after ``n`` updates, so a short run
    is not dominated by its random initial weights. ``warmup`` 10 (TensorFlow's ``num_updates``
    form) reaches 0.995 only after ~1,800 updates; 2 is close to Mean Teacher's ``1 - 1 / (n + 1)``:
    about the plain mean of every update so far (the initial weights count twice) until it
    reaches ``decay`` (0.995: after ~200). Written here (a dozen lines) rather than
    taken from timm's ``ModelEmaV3``, which has the same warm-up, because timm is optional;
    torch's ``AveragedModel`` has no warm-up.
    """

    def __init__(self, source: nn.Module, decay: float, warmup: float = 10.0, average_buffers: bool = False):
        self.source = source
        self.decay = decay
        self.warmup = warmup
        self.average_buffers = average_buffers
        self.updates = 0
        self.module = copy.deepcopy(source).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (self.warmup + self.updates))
        for e, m in zip(self.module.parameters(), self.source.parameters()):
            e.lerp_(m.detach(), 1.0 - d)
        for e, m in zip(self.module.buffers(), self.source.buffers()):
            if self.average_buffers and e.is_floating_point():  # BatchNorm statistics follow the weights
                e.lerp_(m, 1.0 - d)
            else:
                e.copy_(m)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


@dataclass
class Consistency:
    """FixMatch-style consistency on undefined rows (Sohn et al., 2020), with the refinements
    that make it pay on small budgets.

    Each step also draws ``ratio`` x batch undefined images; the teacher's prediction on a
    weakly augmented view (flip + mild crop) becomes the target of a strongly augmented view
    (crop, colour jitter, erasing) wherever its confidence reaches the threshold; that loss
    is added with ``weight``. Undefined rows thus shape the model without a single edit to
    the table; the masked share of the batch is logged as ``unlabeled_used``.

    * teacher: the EMA of the weights when the recipe keeps one (Mean Teacher), else the model;
    * ``align``: distribution alignment (ReMixMatch): guesses are multiplied by
      ``prior / running mean of the guesses``, so a class the model under-predicts is not
      starved of pseudo-labels;
    * ``adaptive="flexmatch"``: class-adaptive thresholds (FlexMatch, Zhang et al., 2021): a
      class whose rows are seldom confidently predicted yet gets a lower threshold,
      ``threshold * b / (2 - b)`` with ``b`` its share of confident predictions (warm-up:
      undecided rows count as a class of their own);
    * ``adaptive="softmatch"``: no hard threshold; each guess is weighted by a truncated
      Gaussian of its confidence (SoftMatch, Chen et al., 2023): weight 1 at or above the
      running mean confidence ``mu``, ``exp(-(conf - mu)^2 / (2 sigma^2))`` below it, with
      ``mu`` and ``sigma^2 / 4`` (two standard deviations, as in the paper's code) running
      averages (momentum 0.999) of the batches' confidence; ``threshold`` is ignored;
    * ``temperature > 0``: soft targets (the guess sharpened) instead of hard pseudo-labels;
    * ``mixup > 0``: interpolation consistency (ICT, Verma et al., 2019; MixMatch's MixUp): the
      strong views are mixed pairwise within the batch, ``lam x_i + (1 - lam) x_j`` with
      ``lam ~ Beta(mixup, mixup)`` folded to ``>= 0.5`` per image, and so are their targets
      and masks: the student must be linear between the pool's images, not only on them.
    * ``rotation > 0``: a self-supervised task beside it (ReMixMatch's rotation loss, Berthelot
      et al., 2020; S4L, Zhai et al., 2019): the first ``rotation_images`` strong views of each
      step are turned by 0-3 quarter turns and ``rotation_head`` (a 4-way linear layer on the
      embedding, outside the model) predicts the turn, with this loss weight. With ``weight``
      0 the rotation task runs alone (S4L-Rotation): no teacher forward, no guesses, the pool's
      turned strong views are its only use of the undefined rows.

    Written here rather than taken from a library: the step shares the engine's model,
    optimizer, autocast, on-device augmentation (``batch_augment``) and DDP wrapping, which
    the reference implementations do not expose.
    """

    loader: object  # yields (uint8 images, labels, positions) of undefined rows, endlessly
    weak: AugmentConfig
    strong: AugmentConfig
    weight: float
    threshold: float
    num_rows: int = 0  # rows of the pool (positions index it); needed by adaptive thresholds
    num_classes: int = 0
    adaptive: str = "none"
    align: bool = False
    temperature: float = 0.0
    views: int = 1  # weak views averaged into the teacher's guess (MixMatch's K)
    rampup: float = 0.0  # share of training over which the weight rises to ``weight`` (0: from the start)
    mixup: float = 0.0  # > 0: strong views and their targets mixed pairwise, lambda ~ Beta(mixup, mixup) (ICT)
    prior: torch.Tensor | None = None  # (K,) class prior for alignment (labeled rows); None: uniform
    da_momentum: float = 0.999  # the running mean of the guesses: m <- momentum m + (1 - momentum) batch mean
    da_debias: bool = False  # m starts at 0 and is divided by 1 - momentum^t; False: m starts at the first batch's mean
    rotation: float = 0.0  # > 0: weight of the rotation-prediction loss on the pool (ReMixMatch / S4L)
    rotation_images: int = 0  # pool images per step given that task
    rotation_head: nn.Module | None = None  # Linear(embedding, 4), set by the engine when rotation > 0
    _da_steps: int = 0
    _guess_mean: torch.Tensor | None = None
    _decided: torch.Tensor | None = None  # (num_rows,) class each pool row was last confidently given, -1: none
    _conf_mean: torch.Tensor | None = None  # softmatch: running mean / variance of the guesses' confidence
    _conf_var: torch.Tensor | None = None

    def batches(self):
        while True:
            yield from self.loader

    def weight_at(self, progress: float) -> float:
        """The loss weight after ``progress`` (0..1) of training: Laine & Aila's sigmoid-shaped
        ramp-up ``exp(-5 (1 - t)^2)``, so the early, near-random guesses teach little."""
        if self.rampup <= 0:
            return self.weight
        t = min(1.0, progress / self.rampup)
        return self.weight * math.exp(-5.0 * (1.0 - t) ** 2)

    @torch.no_grad()
    def targets(self, guess: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From the teacher's ``(B, K)`` probabilities: ``(targets, mask)``; targets are class
        indices ``(B,)`` or, with a temperature, probabilities ``(B, K)``."""
        k = guess.shape[1]
        if self.align:
            mean, m = guess.mean(0), self.da_momentum
            self._da_steps += 1
            if self.da_debias:  # Adam's bias correction: the first batches weigh no more than later ones
                prev = self._guess_mean.to(mean) if self._guess_mean is not None else torch.zeros_like(mean)
                self._guess_mean = m * prev + (1.0 - m) * mean
                running = self._guess_mean / (1.0 - m ** self._da_steps)
            else:
                prev = self._guess_mean.to(mean) if self._guess_mean is not None else mean
                self._guess_mean = m * prev + (1.0 - m) * mean
                running = self._guess_mean
            prior = self.prior.to(guess) if self.prior is not None else torch.full((k,), 1.0 / k, device=guess.device)
            guess = guess * (prior / running.clamp_min(1e-6))
            guess = guess / guess.sum(1, keepdim=True)
        conf, pseudo = guess.max(1)
        thr = torch.full_like(conf, self.threshold)
        if self.adaptive == "flexmatch" and self.num_rows:
            if self._decided is None:
                self._decided = torch.full((self.num_rows,), -1, dtype=torch.long)
            counts = torch.bincount(self._decided[self._decided >= 0], minlength=k).float()
            undecided = float((self._decided < 0).sum())
            beta = counts / max(float(counts.max()), undecided, 1.0)
            per_class = (self.threshold * beta / (2.0 - beta)).to(guess.device)
            thr = per_class[pseudo]
            pos = positions.cpu()
            sure = (conf >= self.threshold).cpu()
            self._decided[pos[sure]] = pseudo.cpu()[sure]
        if self.adaptive == "softmatch":
            mask = self._soft_weights(conf, k)
        else:
            mask = (conf >= thr).float()
        if self.temperature > 0:
            sharp = guess ** (1.0 / self.temperature)
            return sharp / sharp.sum(1, keepdim=True), mask
        return pseudo, mask

    @torch.no_grad()
    def mix(self, images: torch.Tensor, targets: torch.Tensor,
            mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ICT's interpolation: ``(mixed images, mixed soft targets (B, K), mixed mask)``."""
        n = len(images)
        if targets.dim() == 1:
            targets = F.one_hot(targets, self.num_classes or int(targets.max()) + 1).float()
        lam = torch.distributions.Beta(self.mixup, self.mixup).sample((n,)).to(images.device)
        lam = torch.maximum(lam, 1.0 - lam)  # each image stays mostly itself (MixMatch's lambda')
        perm = torch.randperm(n, device=images.device)
        li = lam.view(n, *([1] * (images.dim() - 1))).to(images.dtype)
        mixed = li * images + (1.0 - li) * images[perm]
        lt = lam[:, None].to(targets.dtype)
        return mixed, lt * targets + (1.0 - lt) * targets[perm], lam * mask + (1.0 - lam) * mask[perm]

    def sync_rotation_grads(self) -> None:
        """Average the rotation head's gradients over the processes: the head sits outside the
        DDP-wrapped model, so DDP does not do it (a no-op in one process)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world = torch.distributed.get_world_size()
        for p in self.rotation_head.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world

    @torch.no_grad()
    def rotated(self, strong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``rotation_images`` strong views, each turned by a random number of quarter
        turns: ``(images, turns)``; the rotation task's input and targets."""
        views = strong[: self.rotation_images]
        turns = torch.randint(0, 4, (len(views),), device=views.device)
        out = views.clone()
        for k in (1, 2, 3):
            sel = turns == k
            if sel.any():
                out[sel] = torch.rot90(views[sel], k, dims=(-2, -1))
        return out, turns

    @torch.no_grad()
    def _soft_weights(self, conf: torch.Tensor, k: int) -> torch.Tensor:
        mean, var = conf.mean(), conf.var(unbiased=True) if len(conf) > 1 else torch.zeros((), device=conf.device)
        if self._conf_mean is None:  # the paper's start: chance confidence, unit variance
            self._conf_mean = torch.tensor(1.0 / k, device=conf.device)
            self._conf_var = torch.tensor(1.0, device=conf.device)
        self._conf_mean = 0.999 * self._conf_mean.to(conf) + 0.001 * mean
        self._conf_var = 0.999 * self._conf_var.to(conf) + 0.001 * var
        below = torch.exp(-((conf - self._conf_mean) ** 2) / (2.0 * self._conf_var.clamp_min(1e-8) / 4.0))
        return torch.where(conf >= self._conf_mean, torch.ones_like(conf), below)


def consistency_configs(aug: AugmentConfig, strong_scale=None,
                        weak_scale=None) -> tuple[AugmentConfig, AugmentConfig]:
    """(weak, strong) on-device augmentations for the consistency loss, from the recipe's;
    ``strong_scale`` is the strong view's crop area (default: the recipe's, else 0.35..1),
    ``weak_scale`` the teacher's view's (default 0.7..1)."""
    weak = AugmentConfig(image_size=aug.image_size, rrc_scale=tuple(weak_scale or (0.7, 1.0)), rrc_ratio=(0.9, 1.1),
                         hflip=aug.hflip, mean=aug.mean, std=aug.std)
    strong = AugmentConfig(image_size=aug.image_size, rrc_scale=tuple(strong_scale or aug.rrc_scale or (0.35, 1.0)),
                           rrc_ratio=aug.rrc_ratio, hflip=aug.hflip, rotation=max(aug.rotation, 15.0),
                           color_jitter=(0.4, 0.4, 0.4, 0.1), random_erasing=0.5, mean=aug.mean, std=aug.std)
    return weak, strong


def logit_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` assigned-class logit minus the largest other logit (AUM's margin)."""
    logits = logits.detach().float()
    assigned = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return assigned - other


def train_one_epoch(model: nn.Module, loader, *, optimizer, schedule, opts: StepOptions, num_samples: int,
                    label_smoothing: float = 0.0, mix=None, grad_clip: float | None = None,
                    progress: Progress | None = None, consistency: Consistency | None = None,
                    unlabeled=None, ema: WeightEMA | None = None) -> dict:
    """Train for one pass over ``loader``.

    Returns:
        dict with ``loss_sum``, ``correct``, ``count`` (this process), ``seconds``, and
        ``margin_sum``/``margin_count`` ``(num_samples,)`` float64 arrays: each training
        sample's logit margin from the same forward pass (no extra pass), by position;
        with ``consistency`` (and ``unlabeled``, its running batch iterator) also
        ``unlabeled_used`` and ``unlabeled_seen``: undefined images above the threshold / drawn.
        With ``ema``, its average is updated after every step (and it is the consistency teacher).
    """
    model.train()
    # Running sums stay on the device: no host sync per step (the GPU keeps its queue full).
    loss_acc = torch.zeros((), device=opts.device, dtype=torch.float64)
    correct_acc = torch.zeros((), device=opts.device, dtype=torch.int64)
    count = 0
    positions_seen, margins_seen = [], []
    u_used = torch.zeros((), device=opts.device, dtype=torch.float64)  # sum of the weights (soft with softmatch)
    u_seen = 0
    if consistency is not None and unlabeled is None:
        unlabeled = consistency.batches()
    start = time.perf_counter()
    for images, labels, positions in loader:
        x = opts.train_inputs(images)
        y = labels.to(opts.device, non_blocking=True)
        target = y
        if mix is not None:
            x, target = mix(x, y)
        if consistency is None:
            with opts.autocast():
                logits = model(x)
                loss = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
            sup = loss
        else:
            u_images, _, u_pos = next(unlabeled)
            u = opts.pixels(u_images)
            # weight 0: the rotation task alone (S4L-Rotation), no teacher and no guesses
            guessing = consistency.weight > 0
            if guessing:
                teacher = ema.module if ema is not None else model
                with torch.no_grad(), opts.autocast():
                    # MixMatch's guess: the mean over ``views`` weak draws (a flip and a crop apart).
                    guess = sum(torch.softmax(teacher(batch_augment(u, consistency.weak)).float(), 1)
                                for _ in range(consistency.views)) / consistency.views
                pseudo, mask = consistency.targets(guess, u_pos)
            strong = batch_augment(u, consistency.strong)
            if guessing and consistency.mixup > 0:
                strong, pseudo, mask = consistency.mix(strong, pseudo, mask)
            parts = [x, strong] if guessing else [x]
            if consistency.rotation > 0:
                rotated, turns = consistency.rotated(strong)
                parts.append(rotated)
            inputs = torch.cat(parts)
            if opts.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with opts.autocast():
                if consistency.rotation > 0:
                    out, emb = model(inputs, return_embedding=True)
                    r_logits = consistency.rotation_head(emb[len(inputs) - len(rotated):])
                else:
                    out = model(inputs)
                logits = out[: len(x)]
                loss = sup = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
                if guessing:
                    u_logits = out[len(x): len(x) + len(strong)]
                    u_loss = (F.cross_entropy(u_logits.float(), pseudo, reduction="none") * mask).mean()  # soft or hard
                    loss = loss + consistency.weight_at(schedule.progress()) * u_loss
                    u_used += mask.sum().double()
                if consistency.rotation > 0:
                    loss = loss + consistency.rotation * F.cross_entropy(r_logits.float(), turns)
            u_seen += len(u)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if consistency is not None and consistency.rotation_head is not None:
            consistency.sync_rotation_grads()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.update()
        n = len(y)
        loss_acc += sup.detach().double() * n  # the labeled loss (comparable with and without consistency)
        correct_acc += (logits.detach().argmax(1) == y).sum()
        count += n
        positions_seen.append(positions)
        margins_seen.append(logit_margins(logits, y))
        if progress is not None:
            progress.update(n, loss.detach())  # converted to a float only when shown
    if progress is not None:
        progress.close()
    margin_sum = np.zeros(num_samples, dtype=np.float64)
    margin_count = np.zeros(num_samples, dtype=np.float64)
    if positions_seen:
        pos = torch.cat(positions_seen).numpy()
        np.add.at(margin_sum, pos, torch.cat(margins_seen).cpu().numpy())
        np.add.at(margin_count, pos, 1.0)
    out = {"loss_sum": float(loss_acc), "correct": int(correct_acc), "count": count,
           "seconds": time.perf_counter() - start, "margin_sum": margin_sum, "margin_count": margin_count}
    if consistency is not None:
        out.update(unlabeled_used=int(round(float(u_used))), unlabeled_seen=u_seen)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, opts: StepOptions, num_classes: int) -> dict:
    """Sums for loss, top-1 and top-5 (when ``num_classes >= 5``) over ``loader``'s labeled batches."""
    model.eval()
    sums = torch.zeros(3, device=opts.device, dtype=torch.float64)  # loss, top-1, top-5 (no per-batch sync)
    count = 0
    for logits, labels, _ in opts.infer_loader(model, loader):
        y = labels.to(opts.device)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
        if num_classes >= 5:
            sums[2] += (logits.topk(5, dim=1).indices == y[:, None]).any(1).sum()
        count += len(y)
    loss_sum, top1, top5 = sums.tolist()
    return {"loss_sum": loss_sum, "top1": int(top1), "top5": int(top5), "count": count}


@torch.no_grad()
def prior_bias(model: nn.Module, loader, *, opts: StepOptions, prior: torch.Tensor,
               reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.double().cpu(),
               iters: int = 500, tol: float = 1e-4) -> torch.Tensor:
    """``(K,)`` logit offsets under which the model's mean predicted class probabilities over
    ``loader``'s (unlabeled) images equal ``prior``.

    A label-shift correction in the spirit of Saerens et al. (2002) and logit adjustment (Menon
    et al., 2021), with the prior given rather than estimated: a model trained on few, skewed
    labels under-predicts some classes on the pool (Fashion-MNIST's shirts) even with
    distribution alignment on the teacher's guesses. The fixed point ``b += log prior - log
    mean softmax(logits + b)`` (damped) is solved on the pool's logits, each view's offset before
    the mirror-average as the evaluation will see them; ``reduce_sum`` sums the per-class means
    over processes (DDP shards the pool). The logits are held on the CPU: rows x classes x views
    floats (6,000 x 10 x 2 for the demo). Written here: a dozen lines, and no library solves for
    the offsets given the prior.
    """
    model.eval()
    views = []  # (N, K) logits per view: the offsets are added to each before the mirror-average
    for images, _, _ in loader:
        x = opts.inputs(images)
        with opts.autocast():
            views.append([model(x).float().cpu()] + ([model(x.flip(3)).float().cpu()] if opts.tta_hflip else []))
    empty = [torch.zeros(0, len(prior), dtype=torch.float64)]
    logits = [torch.cat(v).double() for v in zip(*views)] if views else empty
    n = reduce_sum(torch.tensor([float(len(logits[0]))]))[0]
    target = prior.double().clamp_min(1e-6)
    target = (target / target.sum()).log()
    bias = torch.zeros(len(prior), dtype=torch.float64)
    for _ in range(iters):
        probs = sum(torch.softmax(lg + bias, 1) for lg in logits) / len(logits)
        mean = reduce_sum(probs.sum(0)) / n.clamp_min(1.0)
        step = target - mean.clamp_min(1e-12).log()
        bias += 0.5 * step
        if float(step.abs().max()) < tol:
            break
    return (bias - bias.mean()).float()


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, loader, *, opts: StepOptions,
                        reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None, world_size: int = 1) -> None:
    """Recompute ``model``'s BatchNorm running statistics over ``loader``'s images (as the
    evaluation sees them): an average of weights (SWA) has no statistics of its own. torch's
    ``update_bn`` does the pass; under DDP each process saw its shard, so the statistics are then
    averaged over the processes (``reduce_sum``) and every copy of the model stays the same."""
    torch.optim.swa_utils.update_bn((opts.inputs(images) for images, _, _ in loader), model)
    if reduce_sum is not None and world_size > 1:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(reduce_sum(m.running_mean.double()).to(m.running_mean) / world_size)
                m.running_var.copy_(reduce_sum(m.running_var.double()).to(m.running_var) / world_size)


@torch.no_grad()
def predict_batches(model: nn.Module, loader, *, opts: StepOptions, views: bool = False):
    """Yield ``(positions (B,) int64, probs (B, K) float32, embeddings (B, D) float32)`` numpy per batch.

    The streaming form of :func:`predict`: memory holds one batch, whatever the number of rows.
    With ``views`` each item also holds the views the prediction merged, unmerged:
    ``view_logits (B, V, K)`` and ``view_embeddings (B, V, D)`` float32 (V = 2 with mirror-averaging).
    """
    model.eval()
    for outs, _, positions in opts.infer_views_loader(model, loader):
        logits, emb = merge_views(outs, embedding=True)
        item = (positions.numpy(), torch.softmax(logits.float(), 1).cpu().numpy(), emb.float().cpu().numpy())
        if views:
            item += (np.stack([o[0].float().cpu().numpy() for o in outs], 1),
                     np.stack([o[1].float().cpu().numpy() for o in outs], 1))
        yield item


def predict(model: nn.Module, loader, *, opts: StepOptions, num_rows: int, num_classes: int,
            emb_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(probs (N, K), embeddings (N, D))`` float32 for every position of ``loader``."""
    probs = np.zeros((num_rows, num_classes), dtype=np.float32)
    embs = np.zeros((num_rows, emb_dim), dtype=np.float32)
    for pos, p, e in predict_batches(model, loader, opts=opts):
        probs[pos], embs[pos] = p, e
    return probs, embs


@torch.no_grad()
def embed(backbone: nn.Module, loader, *, opts: StepOptions, num_rows: int, emb_dim: int) -> np.ndarray:
    """``(N, D)`` float32 backbone embeddings for every position of ``loader`` (eval mode, no head)."""
    backbone.eval()
    embs = np.zeros((num_rows, emb_dim), dtype=np.float32)
    for images, _, positions in loader:
        with opts.autocast():
            emb = backbone(opts.inputs(images))
        embs[positions.numpy()] = emb.float().cpu().numpy()
    return embs
