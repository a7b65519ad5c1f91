"""Pretraining config in layers: dataclass defaults -> optional YAML -> ``key=value`` overrides.

Method-specific keys (temperature, projection sizes, momentum, ...) default to ``None``
and take the chosen method's defaults when the config is built, so the saved
``recipe.yaml`` states every value used. Setting a key the method does not use is an
error rather than a silent no-op.

Example:
    >>> c = load_pretrain_config(None, ["method=byol", "epochs=2"])
    >>> c.method, c.epochs, c.momentum, c.temperature is None
    ('byol', 2, 0.99, True)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from dataloupe.project import DataloupeError
from dataloupe.train._recipe import AMP_SETTINGS, _coerce, parse_overrides
from dataloupe.train._ssl_methods import METHODS, method_class

_CHOICES: dict[str, tuple] = {
    "optimizer": ("sgd", "adam", "adamw"),
    "scheduler": ("none", "onecycle", "cosine"),
    "loader": ("auto", "cache", "stream"),
    "augment": ("auto", "lightly", "batched"),
    "amp": AMP_SETTINGS,
    "device": ("auto", "cpu", "cuda"),
}
# Keys whose meaning depends on the method; None = the method's default (see _ssl_methods).
METHOD_KEYS = ("temperature", "teacher_temperature", "proj_hidden_dim", "proj_dim", "pred_hidden_dim", "momentum",
               "memory_bank_size", "local_views")


@dataclass
class PretrainConfig:
    """Every knob of a pretraining run. Units in the comments; ``None`` means "automatic"."""

    method: str = "simclr"  # simclr | moco | byol | simsiam | dino | barlowtwins | vicreg
    # --- model (the backbone `train` builds for the same name and image size)
    model: str = "resnet18"  # dataloupe.models name (torchvision ResNet, convnet-*, or timm name)
    small_input: Optional[bool] = None  # 3x3 stride-1 stem, no max-pool; None: image_size <= 32
    # --- data
    image_size: int = 128  # px, side of the square image (views are cropped back to this size)
    batch_size: int = 128  # images per optimizer step, global (each gives two or more views)
    loader: str = "auto"  # cache (decoded uint8 memmap) | stream | auto
    cache_max_gb: float = 8.0  # GiB; auto streams when the decoded cache would exceed it
    num_workers: Optional[int] = None  # DataLoader workers per process; None: automatic
    min_scale: Optional[float] = None  # smallest RandomResizedCrop area; None: the method's lightly default
    cj_strength: Optional[float] = None  # colour-jitter strength; None: the method's lightly default
    augment: str = "auto"  # lightly: lightly's per-image (PIL) view transforms in the loader | batched: the same
    #                        views drawn on the training device, a whole batch at once | auto: batched on CUDA
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])  # normalisation (RGB, 0..1)
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # --- optimisation
    epochs: int = 100  # passes over every row with weight > 0
    optimizer: str = "adamw"  # sgd (Nesterov, momentum 0.9) | adam | adamw
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 1e-4  # L2 (sgd/adam) or decoupled (adamw); none on norms and biases
    scheduler: str = "cosine"  # cosine | onecycle (warm-up then cosine) | none, stepped per batch
    warmup_fraction: float = 0.1  # onecycle: share of steps spent warming up
    min_lr: float = 0.0  # cosine: final learning rate
    # --- method-specific (None: the method's default)
    temperature: Optional[float] = None  # softmax temperature (simclr, moco; dino: the student's)
    teacher_temperature: Optional[float] = None  # dino: the teacher's temperature
    proj_hidden_dim: Optional[int] = None  # projection head hidden width
    proj_dim: Optional[int] = None  # projection head output width (dino: prototypes)
    pred_hidden_dim: Optional[int] = None  # prediction head hidden width (byol, simsiam)
    momentum: Optional[float] = None  # EMA momentum of the momentum encoder at step 0, cosine to 1 (byol, moco, dino)
    memory_bank_size: Optional[int] = None  # moco: negatives kept from past batches
    local_views: Optional[int] = None  # dino: local crops per image
    # --- kNN monitor (labels used only for this number)
    knn_k: int = 20  # neighbours of the leave-one-out weighted kNN on the labeled rows
    knn_max_rows: int = 10000  # labeled rows embedded each epoch (a fixed random subset above this); 0: off
    # --- hardware
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # as a recipe's amp (auto: bf16 on CUDA; native: also on CPUs with AMX or AVX512-BF16)
    channels_last: bool = True  # NHWC memory format, CPU and CUDA
    # --- run
    seed: int = 0  # seeds model init, sampling and augmentation
    collect: bool = True  # write the tables' embeddings at the end (runs/<run>/metrics, for maps)
    log_every: float = 10.0  # seconds between plain progress lines (non-TTY)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def method_keys(self) -> dict[str, Any]:
        """The method-specific keys the method uses, with their values."""
        return {k: getattr(self, k) for k in method_class(self.method).defaults}


def pretrain_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(PretrainConfig)]


def _check(c: PretrainConfig) -> None:
    method_class(c.method)  # unknown method: the error lists the known ones
    for key, choices in _CHOICES.items():
        if getattr(c, key) not in choices:
            raise DataloupeError(f"pretrain key {key!r}: bad value {getattr(c, key)!r} (one of: {', '.join(choices)})")
    for key in ("image_size", "batch_size", "epochs", "knn_k"):
        if getattr(c, key) < 1:
            raise DataloupeError(f"pretrain key {key!r}: must be >= 1, got {getattr(c, key)}")
    if c.batch_size < 2:
        raise DataloupeError("pretrain key 'batch_size': must be >= 2 (views are compared across the batch)")
    if c.lr <= 0:
        raise DataloupeError(f"pretrain key 'lr': must be > 0, got {c.lr}")
    if c.min_scale is not None and not 0.0 < c.min_scale <= 1.0:
        raise DataloupeError(f"pretrain key 'min_scale': must be in (0, 1], got {c.min_scale}")
    if not 0.0 <= c.warmup_fraction <= 1.0:
        raise DataloupeError(f"pretrain key 'warmup_fraction': must be in [0, 1], got {c.warmup_fraction}")
    for key, n in (("mean", 3), ("std", 3)):
        if len(getattr(c, key)) != n:
            raise DataloupeError(f"pretrain key {key!r}: needs {n} numbers, got {getattr(c, key)}")
    if c.knn_max_rows < 0 or (c.num_workers is not None and c.num_workers < 0):
        raise DataloupeError("pretrain keys knn_max_rows and num_workers must be >= 0")
    for key in METHOD_KEYS:
        v = getattr(c, key)
        if v is not None and v <= 0 and key != "local_views":
            raise DataloupeError(f"pretrain key {key!r}: must be > 0, got {v}")
    if c.momentum is not None and not c.momentum < 1.0:
        raise DataloupeError(f"pretrain key 'momentum': must be < 1, got {c.momentum}")
    if c.local_views is not None and c.local_views < 0:
        raise DataloupeError(f"pretrain key 'local_views': must be >= 0, got {c.local_views}")


def _resolve(c: PretrainConfig, explicit: set[str]) -> PretrainConfig:
    """Fill the method's keys from its defaults; refuse keys set explicitly that it does not use."""
    uses = method_class(c.method).defaults
    unused = sorted(k for k in explicit & set(METHOD_KEYS) if k not in uses and getattr(c, k) is not None)
    if unused:
        users = {k: [m for m, cls in METHODS.items() if k in cls.defaults] for k in unused}
        said = "; ".join(f"{k} (used by: {', '.join(v)})" for k, v in users.items())
        raise DataloupeError(f"method {c.method} does not use {said}")
    values = {k: (getattr(c, k) if getattr(c, k) is not None else uses[k]) if k in uses else None
              for k in METHOD_KEYS}
    return dataclasses.replace(c, **values)


def build_pretrain_config(values: dict[str, Any], base: PretrainConfig | None = None) -> PretrainConfig:
    """Apply ``values`` on top of ``base`` (defaults when None), checking keys and types.

    A change of ``method`` resets the method-specific keys not given in ``values``.
    """
    hints = typing.get_type_hints(PretrainConfig)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise DataloupeError(f"unknown pretrain key(s) {', '.join(unknown)}; valid keys: {', '.join(pretrain_keys())}")
    kwargs = (base or PretrainConfig()).to_dict()
    if base is not None and values.get("method", base.method) != base.method:
        kwargs.update({k: None for k in METHOD_KEYS})
    for key, value in values.items():
        kwargs[key] = _coerce(key, value, hints[key])
    config = PretrainConfig(**kwargs)
    _check(config)
    return _resolve(config, set(values))


def load_pretrain_config(path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None,
                         base: PretrainConfig | None = None) -> PretrainConfig:
    """Defaults (or ``base``) -> the YAML file at ``path`` (optional) -> ``key=value`` overrides."""
    config = base or build_pretrain_config({})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DataloupeError(f"pretrain config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise DataloupeError(f"pretrain config {path} is not valid YAML: {str(e).splitlines()[0]}") from e
        if not isinstance(data, dict):
            raise DataloupeError(f"pretrain config {path} must be a mapping of key: value")
        config = build_pretrain_config(data, base=config)
    if overrides:
        ov = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        config = build_pretrain_config(ov, base=config)
    return config


def save_pretrain_config(config: PretrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
