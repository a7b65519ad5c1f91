"""Augmentation with torchvision.transforms.v2 on uint8 tensors — no PIL in the loop.

Random v2 transforms draw one set of parameters per call, so the per-sample part
(crop, flip, rotation, colour, AutoAugment, erasing) runs once per image on its
``(3, S, S)`` uint8 tensor; the batch part (MixUp/CutMix, float conversion and
normalisation) runs once on the whole ``(B, 3, S, S)`` batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

_POLICIES = {
    "imagenet": v2.AutoAugmentPolicy.IMAGENET,
    "cifar10": v2.AutoAugmentPolicy.CIFAR10,
    "svhn": v2.AutoAugmentPolicy.SVHN,
}


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation keys of a recipe (see :class:`dataloupe.train.Recipe`)."""

    image_size: int
    rrc_scale: tuple | None = (0.08, 1.0)
    rrc_ratio: tuple = (0.75, 4 / 3)
    hflip: float = 0.5
    rotation: float = 0.0
    color_jitter: tuple | None = None
    autoaugment: str | None = None
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    # The self-supervised views' photometric steps (lightly's SimCLR/BYOL view transforms); only
    # the batched path (dataloupe.data.batch_augment) reads these, training recipes leave them off.
    color_jitter_p: float = 1.0  # share of images colour-jittered (RandomApply's p)
    grayscale: float = 0.0  # share of images made grey
    blur: float = 0.0  # share of images Gaussian-blurred, sigma in px drawn from blur_sigma
    blur_sigma: tuple = (0.1, 2.0)
    solarize: float = 0.0  # share of images solarised (values >= 0.5 inverted)
    output_size: int | None = None  # side of the crops the batched path returns (DINO's local views); None: the input's

    @classmethod
    def from_recipe(cls, r) -> "AugmentConfig":
        return cls(
            image_size=r.image_size,
            rrc_scale=tuple(r.rrc_scale) if r.rrc_scale else None,
            rrc_ratio=tuple(r.rrc_ratio),
            hflip=r.hflip,
            rotation=r.rotation,
            color_jitter=tuple(r.color_jitter) if r.color_jitter else None,
            autoaugment=r.autoaugment,
            random_erasing=r.random_erasing,
            mixup_alpha=r.mixup_alpha,
            cutmix_alpha=r.cutmix_alpha,
            mean=tuple(r.mean),
            std=tuple(r.std),
        )


def sample_transform(cfg: AugmentConfig, *, only_autoaugment: bool = False) -> v2.Transform | None:
    """Per-image training transform on a ``(3, S, S)`` uint8 tensor (None: identity).

    ``only_autoaugment``: just the AutoAugment step (the batched path does the rest).
    """
    ops: list[v2.Transform] = []
    if only_autoaugment:
        return v2.AutoAugment(_POLICIES[cfg.autoaugment]) if cfg.autoaugment else None
    if cfg.rrc_scale is not None:
        ops.append(v2.RandomResizedCrop(cfg.image_size, scale=cfg.rrc_scale, ratio=cfg.rrc_ratio, antialias=True))
    if cfg.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.rotation > 0:
        ops.append(v2.RandomRotation(cfg.rotation))
    if cfg.color_jitter is not None:
        b, c, s, h = cfg.color_jitter
        ops.append(v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h))
    if cfg.autoaugment is not None:
        ops.append(v2.AutoAugment(_POLICIES[cfg.autoaugment]))
    if cfg.random_erasing > 0:
        ops.append(v2.RandomErasing(cfg.random_erasing, value=0))
    return v2.Compose(ops) if ops else None


def augment_batch(images: torch.Tensor, transform) -> torch.Tensor | list[torch.Tensor]:
    """Apply ``transform`` to each image of a ``(B, 3, S, S)`` uint8 batch (own random draw each).

    A multi-view transform (one returning a list of V tensors per image, as the
    self-supervised view transforms do) gives a list of V batches ``(B, 3, S_v, S_v)``,
    one per view; views may differ in size (DINO's local crops).
    """
    if transform is None:
        return images
    outs = [transform(img) for img in images]
    if outs and isinstance(outs[0], (list, tuple)):
        return [torch.stack([o[v] for o in outs]) for v in range(len(outs[0]))]
    return torch.stack(outs)


def mix_transform(cfg: AugmentConfig, num_classes: int) -> v2.Transform | None:
    """Batch-level MixUp / CutMix (one of them per batch when both are on)."""
    ops = []
    if cfg.mixup_alpha > 0:
        ops.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.cutmix_alpha > 0:
        ops.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


def normalize_batch(images: torch.Tensor, mean, std, *, dtype=torch.float32) -> torch.Tensor:
    """``(B, 3, S, S)`` uint8 -> float, scaled to [0, 1] and normalised (on the batch's device)."""
    x = images.to(dtype=dtype).div_(255.0)
    m = torch.as_tensor(mean, dtype=dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
