"""Training recipes in layers: dataclass defaults -> YAML recipe -> ``key=value`` overrides.

A recipe is a flat set of keys so that every one of them can be overridden from the
command line (``epochs=2 image_size=64 lr=0.01``). Shipped recipes live in
``dataloupe/train/recipes/*.yaml``; a path to a user YAML file works too.

Example:
    >>> r = load_recipe("chihuahua-muffin-resnet18", ["epochs=2", "image_size=64"])
    >>> r.epochs, r.image_size, r.optimizer
    (2, 64, 'adam')
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from dataloupe.project import DataloupeError

RECIPE_DIR = Path(__file__).parent / "recipes"
# autocast: auto = bf16 on CUDA; native = bf16 where the hardware computes it (CUDA, CPUs with AMX or AVX512-BF16)
AMP_SETTINGS = ("auto", "native", "bf16", "none")

_CHOICES: dict[str, tuple] = {
    "optimizer": ("sgd", "adam", "adamw"),
    "scheduler": ("none", "onecycle", "cosine", "plateau"),
    "autoaugment": (None, "imagenet", "cifar10", "svhn"),
    "loader": ("auto", "cache", "store", "stream"),
    "decode": ("auto", "cpu", "gpu"),
    "amp": AMP_SETTINGS,
    "device": ("auto", "cpu", "cuda"),
    "augment": ("auto", "v2", "batched"),
    "checkpoint": ("best", "last"),
}


@dataclass
class Recipe:
    """Every knob of a training run. Units in the comments; ``None`` means "automatic"."""

    name: str = "custom"  # recipe name (informational)
    # --- model
    model: str = "resnet18"  # dataloupe.models name (torchvision ResNet or timm name)
    # weights to start from: a local file (torchvision/timm state dict or a dataloupe checkpoint), run:NAME
    # (that run's best.pt: a training or a pretraining run), or true (timm's download of a timm model's own
    # weights; online only). Every backbone tensor must load; the head loads only if it fits.
    pretrained: Optional[str] = None
    small_input: Optional[bool] = None  # 3x3 stride-1 stem, no max-pool; None: image_size <= 32 (compute grows 16x)
    continue_from: Optional[str] = None  # run name whose best checkpoint initialises the model
    # --- data
    image_size: int = 128  # px, side of the square training/eval image
    batch_size: int = 64  # images per optimizer step, global (split across processes)
    val_batch_size: Optional[int] = None  # images per eval batch per process; None: 2 * batch
    # cache (decoded uint8 memmap) | store (pre-resized JPEG in Lance) | stream (decode loose files) | auto
    loader: str = "auto"
    cache_max_gb: float = 8.0  # GiB; auto picks the store when the decoded cache would exceed it
    store_short_side: Optional[int] = None  # px, short side of the store's images; None: image_size
    store_quality: int = 90  # JPEG quality of the store's images
    decode: str = "auto"  # store: cpu (loader workers) | gpu (decode_jpeg on CUDA, batched) | auto
    num_workers: Optional[int] = None  # DataLoader workers per process; None: automatic
    # --- optimisation
    epochs: int = 10  # passes over the (weighted) training set
    epoch_samples: Optional[int] = None  # labeled draws per epoch (with replacement); None: the set's size
    optimizer: str = "adam"  # sgd (Nesterov when nesterov=true) | adam | adamw
    lr: float = 1e-3  # peak learning rate at lr_reference_batch (or at batch_size)
    lr_reference_batch: Optional[int] = None  # batch the lr is stated for; linear scaling rule
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # SGD Nesterov momentum
    weight_decay: float = 0.0  # L2 (sgd/adam) or decoupled (adamw) weight decay
    scheduler: str = "none"  # none | onecycle | cosine | plateau
    warmup_fraction: float = 0.3  # onecycle: fraction of steps spent warming up
    min_lr: float = 0.0  # cosine: final learning rate
    plateau_factor: float = 0.1  # plateau: LR multiplier on a plateau of val loss
    plateau_patience: int = 3  # plateau: epochs without val-loss improvement
    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0..1
    grad_clip: Optional[float] = None  # max gradient L2 norm
    balance_classes: bool = False  # draw every class equally often (row weights are shared out within a class)
    # --- augmentation (torchvision.transforms.v2 on uint8 tensors)
    rrc_scale: Optional[list] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area; None: off
    rrc_ratio: list = field(default_factory=lambda: [0.75, 1.3333])  # RandomResizedCrop aspect ratio
    hflip: float = 0.5  # horizontal flip probability
    rotation: float = 0.0  # degrees, random rotation in [-r, r]
    color_jitter: Optional[list] = None  # [brightness, contrast, saturation, hue]
    autoaugment: Optional[str] = None  # AutoAugment policy: imagenet | cifar10 | svhn
    random_erasing: float = 0.0  # RandomErasing probability
    mixup_alpha: float = 0.0  # MixUp Beta(alpha, alpha); 0: off
    cutmix_alpha: float = 0.0  # CutMix Beta(alpha, alpha); 0: off
    # --- semi-supervised: FixMatch-style consistency on the table's undefined rows
    unlabeled_weight: float = 0.0  # weight of the consistency loss on undefined rows; 0: off
    unlabeled_ratio: int = 2  # undefined images per labeled image in each step
    unlabeled_threshold: float = 0.95  # confidence on the weak view needed to use an undefined image
    unlabeled_adaptive: str = "none"  # none | flexmatch: per-class thresholds scaled by how far each class has learnt
    #                                   | softmatch: no threshold, guesses weighted by a Gaussian of their confidence
    unlabeled_da: bool = False  # distribution alignment: the guesses' running class mean is pulled to the labeled prior
    unlabeled_da_prior: str = "labeled"  # labeled: the labeled rows' class shares | uniform (labels known to be skewed)
    unlabeled_da_momentum: float = 0.999  # momentum of the guesses' running class mean
    unlabeled_da_debias: bool = False  # the running mean starts at zero and is bias-corrected (as Adam's moments),
    #                                    so the random network's first guesses fade; False: it starts at the first batch
    unlabeled_prior_match: str = "none"  # none | uniform | labeled: after the last epoch, the classifier's biases are
    #   offset so that its mean prediction over the undefined rows equals this prior (label-shift correction)
    unlabeled_temperature: float = 0.0  # > 0: soft targets (guesses sharpened with this temperature); 0: hard
    unlabeled_rampup: float = 0.0  # share of training over which the consistency weight ramps up from 0
    unlabeled_mixup: float = 0.0  # > 0: ICT - strong views and their targets mixed, Beta(a, a); 0: off
    unlabeled_guess_views: int = 1  # weak views whose teacher guesses are averaged (MixMatch's K = 2)
    unlabeled_rotation: float = 0.0  # > 0: weight of a self-supervised loss on the pool: predict by how many
    #   quarter turns a strong view was rotated (ReMixMatch / S4L); 0: off. With unlabeled_weight 0 it runs
    #   alone (S4L-Rotation: the pool teaches through the rotation task only, no guesses)
    unlabeled_rotation_images: int = 0  # pool images per step given the rotation task; 0: as many as labeled ones
    unlabeled_strong_scale: Optional[list] = None  # crop area of the strong view; None: the recipe's rrc_scale (or [0.35, 1])
    unlabeled_weak_scale: Optional[list] = None  # crop area of the teacher's (weak) view; None: [0.7, 1]
    # --- weight averaging
    ema_decay: float = 0.0  # EMA of the weights (e.g. 0.999); evaluation, checkpoints and the consistency teacher use it; 0: off
    ema_warmup: float = 10.0  # the decay is min(ema_decay, (1 + n) / (ema_warmup + n)) after n steps; 10: 0.995
    #                           only after ~1,800 steps; 2: about Mean Teacher's (the mean of the steps so far)
    ema_buffers: str = "copy"  # copy: BatchNorm statistics are the trained model's | average: averaged like the weights
    swa_epochs: int = 0  # the last N epochs run at the constant swa_lr and the trained weights are averaged at the
    #                      end of each (SWA); the average, its BatchNorm statistics recomputed on the training
    #                      images, is the final model; 0: off
    swa_lr: float = 0.0  # learning rate of the SWA epochs; 0: a tenth of lr
    augment: str = "auto"  # v2: per-image v2 transforms in the loader | batched: on the device | auto
    # normalisation (RGB, 0..1); left at these defaults, the loaded weights' own mean/std are used instead
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # --- hardware
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # bf16 autocast: on CUDA (auto), wherever native (native), always (bf16), never (none)
    channels_last: bool = True  # NHWC memory format, CPU and CUDA (faster convs and pooling on both; bench/RESULTS.md)
    compile: bool = False  # torch.compile the model (CUDA)
    # --- run
    seed: int = 0  # seeds model init, sampling and augmentation
    collect: bool = True  # write per-sample metrics for train and val tables at the end
    tta_hflip: bool = False  # evaluate and collect on the mean of the image and its mirror (2x eval cost)
    checkpoint: str = "best"  # best: best.pt is the epoch with the best val top-1 | last: the last epoch (val only reports)
    eval_every: int = 1  # epochs between validation passes (the last epoch is always evaluated); best.pt is picked among them
    log_every: float = 10.0  # seconds between plain progress lines (non-TTY)

    @property
    def effective_lr(self) -> float:
        """Peak LR after the linear scaling rule (``lr * batch_size / lr_reference_batch``)."""
        if self.lr_reference_batch:
            return self.lr * self.batch_size / self.lr_reference_batch
        return self.lr

    @property
    def effective_swa_lr(self) -> float:
        """Learning rate of the SWA epochs (``swa_lr``, or a tenth of the peak)."""
        return self.swa_lr or self.effective_lr / 10

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Recipe)
    return {f.name: hints[f.name] for f in dataclasses.fields(Recipe)}


def valid_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Recipe)]


def _coerce(key: str, value: Any, typ: Any) -> Any:
    optional = False
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        optional, typ = True, args[0]
    nullish = isinstance(value, str) and value.lower() in ("null", "~", "none" if optional else "null")
    if value is None or nullish:
        if optional:
            return None
        raise DataloupeError(f"recipe key {key!r} cannot be null")
    bad = DataloupeError(f"recipe key {key!r}: bad value {value!r} (expected {getattr(typ, '__name__', typ)})")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise bad
        return value
    if typ is list:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise bad
        return [float(v) for v in value]
    return value


MIN_IMAGE_SIZE = 8  # px; below it the networks' downsampling leaves nothing to learn from


def _bad(key: str, rule: str, value) -> DataloupeError:
    return DataloupeError(f"recipe key {key!r}: must be {rule}, got {value}")


def _check_numbers(r: Recipe) -> None:
    """Every number finite, and each within the range where training means something."""
    for f in dataclasses.fields(r):
        v = getattr(r, f.name)
        values = v if isinstance(v, list) else [v]
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            raise _bad(f.name, "finite", v)
    if r.image_size < MIN_IMAGE_SIZE:
        raise _bad("image_size", f">= {MIN_IMAGE_SIZE} (pixels)", r.image_size)
    if r.min_lr < 0 or (r.scheduler == "cosine" and r.min_lr >= r.effective_lr):
        raise _bad("min_lr", f">= 0 (and below lr, {r.effective_lr:g}, for cosine)", r.min_lr)
    for key in ("weight_decay", "rotation", "mixup_alpha", "cutmix_alpha"):
        if getattr(r, key) < 0:
            raise _bad(key, ">= 0", getattr(r, key))
    if not 0.0 <= r.momentum < 1.0:
        raise _bad("momentum", "in [0, 1)", r.momentum)
    if not 0.0 < r.plateau_factor < 1.0 or r.plateau_patience < 0:
        raise DataloupeError(f"recipe keys plateau_factor in (0, 1) and plateau_patience >= 0 are needed; got"
                             f" {r.plateau_factor}, {r.plateau_patience}")
    for key in ("grad_clip", "val_batch_size", "lr_reference_batch"):
        v = getattr(r, key)
        if v is not None and v <= 0:
            raise _bad(key, "> 0 (or null)", v)
    if r.cache_max_gb < 0 or r.log_every <= 0:
        raise DataloupeError(f"recipe keys cache_max_gb >= 0 and log_every > 0 are needed; got {r.cache_max_gb},"
                             f" {r.log_every}")
    if min(r.std) <= 0:
        raise _bad("std", "3 numbers > 0 (pixels are divided by them)", r.std)
    if r.rrc_scale is not None and not 0.0 < r.rrc_scale[0] <= r.rrc_scale[1] <= 1.0:
        raise _bad("rrc_scale", "[min, max] with 0 < min <= max <= 1 (share of the image's area)", r.rrc_scale)
    if not 0.0 < r.rrc_ratio[0] <= r.rrc_ratio[1]:
        raise _bad("rrc_ratio", "[min, max] with 0 < min <= max", r.rrc_ratio)
    if r.color_jitter is not None and min(r.color_jitter) < 0:
        raise _bad("color_jitter", "4 numbers >= 0", r.color_jitter)


def _check(r: Recipe) -> None:
    for key, choices in _CHOICES.items():
        if getattr(r, key) not in choices:
            shown = ", ".join(str(c) for c in choices)
            raise DataloupeError(f"recipe key {key!r}: bad value {getattr(r, key)!r} (one of: {shown})")
    positive = ("image_size", "batch_size", "epochs")
    for key in positive:
        if getattr(r, key) < 1:
            raise DataloupeError(f"recipe key {key!r}: must be >= 1, got {getattr(r, key)}")
    if r.lr <= 0:
        raise DataloupeError(f"recipe key 'lr': must be > 0, got {r.lr}")
    for key in ("label_smoothing", "hflip", "random_erasing", "warmup_fraction"):
        if not 0.0 <= getattr(r, key) <= 1.0:
            raise DataloupeError(f"recipe key {key!r}: must be in [0, 1], got {getattr(r, key)}")
    for key, n in (("rrc_scale", 2), ("unlabeled_strong_scale", 2), ("unlabeled_weak_scale", 2), ("rrc_ratio", 2),
                   ("mean", 3), ("std", 3), ("color_jitter", 4)):
        v = getattr(r, key)
        if v is not None and len(v) != n:
            raise DataloupeError(f"recipe key {key!r}: needs {n} numbers, got {v}")
    if r.epoch_samples is not None and r.epoch_samples < 1:
        raise DataloupeError(f"recipe key 'epoch_samples': must be >= 1, got {r.epoch_samples}")
    if r.eval_every < 1 or (r.eval_every > 1 and r.scheduler == "plateau"):
        raise DataloupeError(f"eval_every must be >= 1 (and 1 with scheduler plateau, which reads val loss every"
                             f" epoch); got {r.eval_every}")
    if r.unlabeled_prior_match not in ("none", "uniform", "labeled"):
        raise DataloupeError("recipe key 'unlabeled_prior_match': none, uniform or labeled, got "
                             f"{r.unlabeled_prior_match!r}")
    if r.ema_buffers not in ("copy", "average"):
        raise DataloupeError(f"recipe key 'ema_buffers': copy or average, got {r.ema_buffers!r}")
    if not 0 <= r.swa_epochs < r.epochs or r.swa_lr < 0:
        raise DataloupeError(f"recipe keys swa_epochs in [0, epochs) and swa_lr >= 0 are needed (epochs {r.epochs});"
                             f" got {r.swa_epochs}, {r.swa_lr}")
    if r.ema_warmup < 1.0:
        raise DataloupeError(f"recipe key 'ema_warmup' must be >= 1, got {r.ema_warmup}")
    if not 0.0 <= r.unlabeled_da_momentum < 1.0:
        raise DataloupeError(f"recipe key 'unlabeled_da_momentum' must be in [0, 1), got {r.unlabeled_da_momentum}")
    if r.unlabeled_da_prior not in ("labeled", "uniform"):
        raise DataloupeError(f"recipe key 'unlabeled_da_prior': labeled or uniform, got {r.unlabeled_da_prior!r}")
    if r.unlabeled_adaptive not in ("none", "flexmatch", "softmatch"):
        raise DataloupeError(f"unlabeled_adaptive must be none, flexmatch or softmatch, not {r.unlabeled_adaptive!r}")
    if not 0.0 <= r.ema_decay < 1.0 or r.unlabeled_temperature < 0:
        raise DataloupeError(f"ema_decay must be in [0, 1) and unlabeled_temperature >= 0; got {r.ema_decay},"
                             f" {r.unlabeled_temperature}")
    if not 0.0 <= r.unlabeled_rampup <= 1.0:
        raise DataloupeError(f"recipe key 'unlabeled_rampup' must be in [0, 1], got {r.unlabeled_rampup}")
    if r.unlabeled_mixup < 0:
        raise DataloupeError(f"recipe key 'unlabeled_mixup' must be >= 0 (0: off), got {r.unlabeled_mixup}")
    if r.unlabeled_rotation < 0 or r.unlabeled_rotation_images < 0:
        raise DataloupeError("recipe keys 'unlabeled_rotation' and 'unlabeled_rotation_images' must be >= 0"
                             " (0: off / as many as the labeled batch), got"
                             f" {r.unlabeled_rotation}, {r.unlabeled_rotation_images}")
    if r.unlabeled_guess_views < 1:
        raise DataloupeError(f"recipe key 'unlabeled_guess_views' must be >= 1, got {r.unlabeled_guess_views}")
    if r.unlabeled_weight < 0 or r.unlabeled_ratio < 1 or not 0.0 <= r.unlabeled_threshold <= 1.0:
        raise DataloupeError("recipe keys unlabeled_weight >= 0, unlabeled_ratio >= 1 and unlabeled_threshold"
                             f" in [0, 1] are needed; got {r.unlabeled_weight}, {r.unlabeled_ratio},"
                             f" {r.unlabeled_threshold}")
    if r.num_workers is not None and r.num_workers < 0:
        raise DataloupeError(f"recipe key 'num_workers': must be >= 0, got {r.num_workers}")
    _check_numbers(r)


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def _read_yaml(name_or_path: str) -> tuple[str, dict]:
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise DataloupeError(f"recipe file not found: {path}")
        name = path.stem
    else:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise DataloupeError(
                f"unknown recipe {name_or_path!r}; known: {', '.join(list_recipes())} (or a path to a .yaml file)"
            )
        name = name_or_path
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataloupeError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise DataloupeError(f"recipe {path} must be a mapping of key: value")
    return name, data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=2", "rrc_scale=[0.8,1]"]`` -> ``{"epochs": 2, "rrc_scale": [0.8, 1]}`` (YAML values)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise DataloupeError(f"override {pair!r} is not key=value")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def build_recipe(values: dict[str, Any], base: Recipe | None = None) -> Recipe:
    """Apply ``values`` on top of ``base`` (defaults when None), checking keys and types."""
    types_ = _field_types()
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise DataloupeError(f"unknown recipe key(s) {', '.join(unknown)}; valid keys: {', '.join(valid_keys())}")
    kwargs = (base or Recipe()).to_dict()
    for key, value in values.items():
        if key == "pretrained" and isinstance(value, bool):  # YAML `pretrained: true` (timm's download)
            value = "true" if value else None
        kwargs[key] = _coerce(key, value, types_[key])
    recipe = Recipe(**kwargs)
    _check(recipe)
    return recipe


def load_recipe(name_or_path: str, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Load a shipped recipe by name (or a YAML file) and apply ``key=value`` overrides."""
    name, data = _read_yaml(name_or_path)
    data.setdefault("name", name)
    recipe = build_recipe(data)
    if overrides:
        ov = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        recipe = build_recipe(ov, base=recipe)
    return recipe


def save_recipe(recipe: Recipe, path: Path) -> None:
    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
