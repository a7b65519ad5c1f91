"""Self-supervised methods by name: heads, loss, momentum encoders and view transforms.

Each method is a small ``nn.Module`` around the backbone that ``create_model`` builds.
Losses, heads, momentum utilities and view augmentations all come from ``lightly`` (MIT);
what is written here is only the wiring: which views go through which encoder.

A method's ``forward(views)`` returns the loss, so the module can be wrapped in
``DistributedDataParallel`` as it is; ``after_backward`` and ``after_step`` run on the
unwrapped module (DINO's frozen last layer, momentum-encoder updates).

Example:
    >>> from dataloupe.models import create_model
    >>> clf = create_model("convnet-xxs", 1)
    >>> m = build_method("simclr", clf.backbone, clf.num_features, temperature=0.5, proj_hidden_dim=64, proj_dim=32)
    >>> views = m.views_transform(input_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from PIL import Image
from torch import nn

from dataloupe.project import DataloupeError


class SSLMethod(nn.Module):
    """Base class: ``backbone`` (the keys ``best.pt`` keeps) plus method-specific heads.

    Class attributes:
        name: registry name.
        defaults: method-specific config keys and their defaults (None-valued keys of
            :class:`PretrainConfig` take these).
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def transform(input_size: int, normalize: dict, tweaks: dict):
        """The lightly multi-view transform (PIL image -> list of view tensors)."""
        raise NotImplementedError

    def views_transform(self, *, input_size: int, mean, std, min_scale: float | None = None,
                        cj_strength: float | None = None) -> "PILViews":
        """Per-image transform for the loader: a ``(3, S, S)`` uint8 tensor -> list of normalised views."""
        tweaks = {k: v for k, v in (("min_scale", min_scale), ("cj_strength", cj_strength)) if v is not None}
        return PILViews(self.transform(input_size, {"mean": list(mean), "std": list(std)}, tweaks))

    def after_backward(self, epoch: int) -> None:
        """Between ``backward`` and the optimizer step (``epoch`` counts from 0)."""

    def after_step(self, step: int, total_steps: int) -> None:
        """After the optimizer step (``step`` counts from 1)."""

    @staticmethod
    def loss_in_fp32(fn, *tensors: torch.Tensor) -> torch.Tensor:
        """Compute a loss outside autocast, in float32 (softmax over similarities needs it)."""
        with torch.autocast(tensors[0].device.type, enabled=False):
            return fn(*[t.float() for t in tensors])


class PILViews:
    """Adapter: lightly's transforms take PIL images (its blur and solarisation are PIL
    operations), the decoded cache yields uint8 ``(3, S, S)`` tensors; one cheap
    ``Image.fromarray`` per image bridges them. Picklable, for DataLoader workers."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.transform(Image.fromarray(image.permute(1, 2, 0).numpy()))


def batched_views(transform) -> list:
    """lightly's multi-view ``transform`` as one on-device :class:`AugmentConfig` per view.

    The parameters are read from the lightly transform the method builds (crop scale and size,
    flip, colour-jitter ranges and probability, greyscale, blur, solarisation, normalisation),
    so ``augment: batched`` draws the same kinds of views as the per-image path, applied to a
    whole uint8 batch on the training device by :func:`dataloupe.data.batch_augment`: at GPU
    rates lightly's per-image PIL steps leave the GPU waiting (the seventh session's H200 ran
    SimCLR at 1,177 views/s on 14 loader workers). Differences, by design: bilinear resampling
    throughout, jitter in a fixed order, solarisation after the blur. A step with no batched
    form (vertical flip, lightly's 90-degree rotation) is refused rather than skipped.
    """
    from dataloupe.data import AugmentConfig

    configs = []
    for view in transform.transforms:
        steps = list(view.transform.transforms) if hasattr(view, "transform") else list(view.transforms)
        kw: dict = {"rrc_scale": None, "hflip": 0.0}
        for t in steps:
            kind = type(t).__name__
            if kind == "RandomResizedCrop":
                kw.update(rrc_scale=tuple(t.scale), rrc_ratio=tuple(t.ratio), output_size=int(t.size[0]))
            elif kind == "RandomHorizontalFlip":
                kw["hflip"] = float(t.p)
            elif kind in ("RandomVerticalFlip", "RandomRotate") and not float(getattr(t, "p", getattr(t, "prob", 0))):
                continue  # present in every lightly view, off by default
            elif kind == "RandomApply" and len(t.transforms) == 1 and type(t.transforms[0]).__name__ == "ColorJitter":
                cj = t.transforms[0]
                spans = [(r[1] - 1.0) if r else 0.0 for r in (cj.brightness, cj.contrast, cj.saturation)]
                spans.append(cj.hue[1] if cj.hue else 0.0)  # ColorJitter keeps (1 - s, 1 + s) and (-h, h)
                kw.update(color_jitter=tuple(float(v) for v in spans), color_jitter_p=float(t.p))
            elif kind == "RandomGrayscale":
                kw["grayscale"] = float(t.p)
            elif kind == "GaussianBlur" and hasattr(t, "sigmas"):
                kw.update(blur=float(t.prob), blur_sigma=tuple(float(v) for v in t.sigmas))
            elif kind == "RandomSolarization":
                kw["solarize"] = float(t.prob)
            elif kind == "Normalize":
                kw.update(mean=tuple(t.mean), std=tuple(t.std))
            elif kind != "ToTensor":
                raise DataloupeError(f"augment=batched has no on-device form of lightly's {kind} ({t}); "
                                     "use augment=lightly")
        if kw.get("output_size") is None:
            raise DataloupeError("augment=batched needs a RandomResizedCrop in every view")
        configs.append(AugmentConfig(image_size=kw["output_size"], **kw))
    return configs


def _momentum_copy(module: nn.Module, twin: nn.Module | None = None) -> nn.Module:
    """A frozen copy of ``module`` (``twin``: a fresh instance to load its weights into, for
    modules that cannot be deep-copied, such as DINO's weight-normed head)."""
    from lightly.models.utils import deactivate_requires_grad

    if twin is None:
        twin = copy.deepcopy(module)
    else:
        twin.load_state_dict(module.state_dict())
    deactivate_requires_grad(twin)
    return twin


class _Momentum(SSLMethod):
    """Shared by methods with a momentum (EMA) encoder: ``momentum`` rises to 1 on a cosine."""

    def __init__(self, backbone: nn.Module, momentum: float, pairs: list[tuple[str, str]]):
        super().__init__(backbone)
        self.momentum, self.pairs = momentum, pairs

    def after_step(self, step: int, total_steps: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(min(step, total_steps), max(total_steps, 1), self.momentum, 1.0)
        for online, ema in self.pairs:
            update_momentum(getattr(self, online), getattr(self, ema), m=m)


class SimCLR(SSLMethod):
    """SimCLR (Chen et al., 2020): NT-Xent between two views, negatives from the batch."""

    name = "simclr"
    defaults = {"temperature": 0.5, "proj_hidden_dim": 512, "proj_dim": 128}

    def __init__(self, backbone, dim, *, temperature, proj_hidden_dim, proj_dim, distributed=False):
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import SimCLRProjectionHead

        super().__init__(backbone)
        self.head = SimCLRProjectionHead(dim, proj_hidden_dim, proj_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=distributed)

    def forward(self, views):
        z0, z1 = (self.head(self.backbone(v)) for v in views[:2])
        return self.loss_in_fp32(self.criterion, z0, z1)

    @staticmethod
    def transform(input_size, normalize, tweaks):
        from lightly.transforms import SimCLRTransform

        return SimCLRTransform(input_size=input_size, normalize=normalize, **tweaks)


class MoCo(_Momentum):
    """MoCo v2 (Chen et al., 2020): a momentum key encoder and a memory bank of negatives."""

    name = "moco"
    defaults = {"temperature": 0.2, "proj_hidden_dim": 512, "proj_dim": 128, "momentum": 0.99,
                "memory_bank_size": 4096}

    def __init__(self, backbone, dim, *, temperature, proj_hidden_dim, proj_dim, momentum, memory_bank_size,
                 distributed=False):
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import MoCoProjectionHead

        super().__init__(backbone, momentum, [("backbone", "backbone_momentum"), ("head", "head_momentum")])
        self.head = MoCoProjectionHead(dim, proj_hidden_dim, proj_dim)
        self.backbone_momentum = _momentum_copy(backbone)
        self.head_momentum = _momentum_copy(self.head)
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(memory_bank_size, proj_dim),
                                    gather_distributed=distributed)

    def forward(self, views):
        query = self.head(self.backbone(views[0]))
        with torch.no_grad():
            key = self.head_momentum(self.backbone_momentum(views[1]))
        return self.loss_in_fp32(self.criterion, query, key)

    @staticmethod
    def transform(input_size, normalize, tweaks):
        from lightly.transforms import MoCoV2Transform

        return MoCoV2Transform(input_size=input_size, normalize=normalize, **tweaks)


class BYOL(_Momentum):
    """BYOL (Grill et al., 2020): predict the momentum encoder's projection of the other view."""

    name = "byol"
    defaults = {"proj_hidden_dim": 1024, "proj_dim": 256, "pred_hidden_dim": 1024, "momentum": 0.99}

    def __init__(self, backbone, dim, *, proj_hidden_dim, proj_dim, pred_hidden_dim, momentum, distributed=False):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead

        super().__init__(backbone, momentum, [("backbone", "backbone_momentum"), ("head", "head_momentum")])
        self.head = BYOLProjectionHead(dim, proj_hidden_dim, proj_dim)
        self.predictor = BYOLPredictionHead(proj_dim, pred_hidden_dim, proj_dim)
        self.backbone_momentum = _momentum_copy(backbone)
        self.head_momentum = _momentum_copy(self.head)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, views):
        x0, x1 = views[:2]
        p0, p1 = (self.predictor(self.head(self.backbone(x))) for x in (x0, x1))
        with torch.no_grad():
            z0, z1 = (self.head_momentum(self.backbone_momentum(x)) for x in (x0, x1))
        return 0.5 * (self.loss_in_fp32(self.criterion, p0, z1) + self.loss_in_fp32(self.criterion, p1, z0))

    @staticmethod
    def transform(input_size, normalize, tweaks):
        from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

        return BYOLTransform(BYOLView1Transform(input_size=input_size, normalize=normalize, **tweaks),
                             BYOLView2Transform(input_size=input_size, normalize=normalize, **tweaks))


class SimSiam(SSLMethod):
    """SimSiam (Chen & He, 2021): BYOL without the momentum encoder (stop-gradient only)."""

    name = "simsiam"
    defaults = {"proj_hidden_dim": 512, "proj_dim": 512, "pred_hidden_dim": 128}

    def __init__(self, backbone, dim, *, proj_hidden_dim, proj_dim, pred_hidden_dim, distributed=False):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import SimSiamPredictionHead, SimSiamProjectionHead

        super().__init__(backbone)
        self.head = SimSiamProjectionHead(dim, proj_hidden_dim, proj_dim)
        self.predictor = SimSiamPredictionHead(proj_dim, pred_hidden_dim, proj_dim)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, views):
        z0, z1 = (self.head(self.backbone(v)) for v in views[:2])
        p0, p1 = self.predictor(z0), self.predictor(z1)
        return 0.5 * (self.loss_in_fp32(self.criterion, p0, z1.detach())
                      + self.loss_in_fp32(self.criterion, p1, z0.detach()))

    @staticmethod
    def transform(input_size, normalize, tweaks):
        from lightly.transforms import SimSiamTransform

        return SimSiamTransform(input_size=input_size, normalize=normalize, **tweaks)


class DINO(_Momentum):
    """DINO (Caron et al., 2021): self-distillation from a momentum teacher, multi-crop views.

    The teacher sees the two global views, the student all views (global + ``local_views``
    local crops of ~0.43 x ``image_size``); ``temperature`` is the student's.
    """

    name = "dino"
    defaults = {"temperature": 0.1, "teacher_temperature": 0.04, "proj_hidden_dim": 512, "proj_dim": 2048,
                "momentum": 0.996, "local_views": 6}

    def __init__(self, backbone, dim, *, temperature, teacher_temperature, proj_hidden_dim, proj_dim, momentum,
                 local_views, distributed=False):
        from lightly.loss import DINOLoss
        from lightly.models.modules.heads import DINOProjectionHead

        super().__init__(backbone, momentum, [("backbone", "backbone_momentum"), ("head", "head_momentum")])
        self.head = DINOProjectionHead(dim, proj_hidden_dim, min(256, proj_hidden_dim), proj_dim,
                                       freeze_last_layer=1)
        self.backbone_momentum = _momentum_copy(backbone)
        self.head_momentum = _momentum_copy(self.head, DINOProjectionHead(dim, proj_hidden_dim,
                                                                          min(256, proj_hidden_dim), proj_dim))
        self.criterion = DINOLoss(output_dim=proj_dim, warmup_teacher_temp=teacher_temperature,
                                  teacher_temp=teacher_temperature, student_temp=temperature)
        self.local_views = local_views

    def forward(self, views):
        with torch.no_grad():
            teacher = [self.head_momentum(self.backbone_momentum(v)) for v in views[:2]]
        student = [self.head(self.backbone(v)) for v in views]
        return self.loss_in_fp32(lambda *t: self.criterion(list(t[:2]), list(t[2:])), *teacher, *student)

    def after_backward(self, epoch):
        self.head.cancel_last_layer_gradients(current_epoch=epoch)

    def views_transform(self, *, input_size, mean, std, min_scale=None, cj_strength=None):
        from lightly.transforms import DINOTransform

        kw = {"global_crop_scale": (min_scale, 1.0)} if min_scale is not None else {}
        if cj_strength is not None:
            kw["cj_strength"] = cj_strength
        return PILViews(DINOTransform(global_crop_size=input_size, local_crop_size=max(8, round(input_size * 96 / 224)),
                                      n_local_views=self.local_views,
                                      normalize={"mean": list(mean), "std": list(std)}, **kw))


class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al., 2021): the two views' cross-correlation towards identity."""

    name = "barlowtwins"
    defaults = {"proj_hidden_dim": 1024, "proj_dim": 1024}

    def __init__(self, backbone, dim, *, proj_hidden_dim, proj_dim, distributed=False):
        from lightly.loss import BarlowTwinsLoss
        from lightly.models.modules.heads import BarlowTwinsProjectionHead

        super().__init__(backbone)
        self.head = BarlowTwinsProjectionHead(dim, proj_hidden_dim, proj_dim)
        self.criterion = BarlowTwinsLoss(gather_distributed=distributed)

    def forward(self, views):
        z0, z1 = (self.head(self.backbone(v)) for v in views[:2])
        return self.loss_in_fp32(self.criterion, z0, z1)

    @staticmethod
    def transform(input_size, normalize, tweaks):
        from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

        # lightly's Barlow Twins recipe uses the BYOL views
        return BYOLTransform(BYOLView1Transform(input_size=input_size, normalize=normalize, **tweaks),
                             BYOLView2Transform(input_size=input_size, normalize=normalize, **tweaks))


class VICReg(SSLMethod):
    """VICReg (Bardes et al., 2022): invariance, variance and covariance terms on two views."""

    name = "vicreg"
    defaults = {"proj_hidden_dim": 1024, "proj_dim": 1024}

    def __init__(self, backbone, dim, *, proj_hidden_dim, proj_dim, distributed=False):
        from lightly.loss import VICRegLoss
        from lightly.models.modules.heads import VICRegProjectionHead

        super().__init__(backbone)
        self.head = VICRegProjectionHead(dim, proj_hidden_dim, proj_dim)
        self.criterion = VICRegLoss(gather_distributed=distributed)

    def forward(self, views):
        z0, z1 = (self.head(self.backbone(v)) for v in views[:2])
        return self.loss_in_fp32(self.criterion, z0, z1)

    @staticmethod
    def transform(input_size, normalize, tweaks):
        from lightly.transforms import VICRegTransform

        return VICRegTransform(input_size=input_size, normalize=normalize, **tweaks)


METHODS: dict[str, type[SSLMethod]] = {m.name: m for m in (SimCLR, MoCo, BYOL, SimSiam, DINO, BarlowTwins, VICReg)}


def method_class(name: str) -> type[SSLMethod]:
    """The method registered as ``name``; a clear error listing the known ones."""
    if name not in METHODS:
        raise DataloupeError(f"unknown pretraining method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, backbone: nn.Module, dim: int, *, distributed: bool = False, **keys) -> SSLMethod:
    """Method ``name`` around ``backbone`` (embedding width ``dim``); ``keys`` are its config keys."""
    cls = method_class(name)
    return cls(backbone, dim, distributed=distributed, **{k: keys[k] for k in cls.defaults})
