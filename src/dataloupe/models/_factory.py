"""Create image classifiers by name; every model exposes its penultimate-layer embedding.

torchvision ResNets and the small ConvNets are built in; any other name is looked up in
timm when timm is installed (``hf-hub:ORG/NAME`` names too, online). Weights load through
:func:`~dataloupe.models.load_pretrained`: a local file, or ``"true"`` for timm's own
download of a timm model's published weights.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm

from dataloupe.models._convnet import CONVNETS, ConvNet
from dataloupe.models._ensemble import ConcatBackbone, parse_ensemble_name
from dataloupe.models._memory import MemoryVote, parse_memory_name
from dataloupe.models._weights import load_pretrained
from dataloupe.project import DataloupeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneEntry:
    """One architecture :func:`create_model` can build (timm's ``pretrained_cfg``, reduced).

    Attributes:
        name: the model name.
        build: ``small_input -> backbone`` whose forward gives the embedding ``(N, D)``.
        num_features: ``D``; None when only the built backbone knows (its ``num_features``).
        classifier: the classifier layer names in the architecture's own state dict (a
            weights file's ``fc.weight``...), which :func:`load_pretrained` drops.
        first_conv: the stem convolution that ``small_input`` replaces ("" when none is).
        mean, std: the normalisation (RGB, 0..1) of the architecture's published weights.
        small_input: whether ``small_input=True`` is supported (convnets: small already).
        timm: built by timm (its weights then load through timm's own loader).
    """

    name: str
    build: Callable[[bool], nn.Module]
    num_features: int | None
    classifier: tuple[str, ...] = ()
    first_conv: str = ""
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    small_input: bool = True
    timm: bool = False


_BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, *, num_features: int | None, classifier: tuple[str, ...] = (),
                      first_conv: str = "", mean=IMAGENET_MEAN, std=IMAGENET_STD, small_input: bool = True):
    """Decorator adding ``build(small_input) -> backbone`` to the registry under ``name``.

    Example:
        >>> @register_backbone("tiny-linear", num_features=3, small_input=False)
        ... def _tiny(small_input):
        ...     return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> create_model("tiny-linear", 2)(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 2])
        >>> del _BACKBONES["tiny-linear"]
    """
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is already registered")

    def deco(build: Callable[[bool], nn.Module]) -> Callable[[bool], nn.Module]:
        _BACKBONES[name] = BackboneEntry(name, build, num_features, tuple(classifier), first_conv,
                                         tuple(mean), tuple(std), small_input)
        return build

    return deco


def _torchvision_resnet(name: str, small_input: bool) -> nn.Module:
    net = getattr(tvm, name)(weights=None)
    if small_input:
        # CIFAR-style stem for images <= 64 px: 3x3 stride-1 conv and no max-pool, so a
        # 32 px image is not reduced to 1x1 before the last stage.
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


for _name, _nf in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("resnet101", 2048)):
    register_backbone(_name, num_features=_nf, classifier=("fc",), first_conv="conv1")(
        functools.partial(_torchvision_resnet, _name))
for _name, _widths in CONVNETS.items():
    # small already (a 3x3 stem): small_input changes nothing, and is accepted
    register_backbone(_name, num_features=_widths[-1], first_conv="net.0.0")(
        lambda small_input, w=_widths: ConvNet(w))


class Classifier(nn.Module):
    """A backbone that yields an embedding ``(N, D)`` plus a linear head ``(N, K)``.

    ``forward(x)`` returns logits; ``forward(x, return_embedding=True)`` returns
    ``(logits, embedding)`` from the same pass, so metrics need no second forward.
    :func:`create_model` also sets ``model_name``, ``small_input``, ``is_timm`` and
    ``source_head`` (the classifier layer names of the backbone's own state dict, which
    :func:`load_pretrained` drops), so weights can be checked against the model.
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_classes)
        self.num_features = num_features
        self.num_classes = num_classes
        self.model_name: str | None = None
        self.small_input: bool | None = None
        self.is_timm = False
        self.source_head: tuple[str, ...] = ()
        self.weights_report = None  # the WeightsReport of create_model(pretrained=...)
        self.memory: nn.Module | None = None  # a MemoryVote for knn:<model> names (models/_memory.py)

    def forward(self, x: torch.Tensor, return_embedding: bool = False):
        emb = self.backbone(x)
        logits = self.head(emb)
        if self.memory is not None:
            logits = self.memory(logits, emb)
        return (logits, emb) if return_embedding else logits

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def _is_timm_name(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return name.startswith("hf-hub:") or timm.is_model(name)


def _timm_small_stem(name: str) -> bool:
    """Whether timm model ``name`` has a stem :func:`_timm_backbone` can make small (timm ResNets)."""
    import timm

    if name.startswith("hf-hub:"):
        return False
    return timm.models.model_entrypoint(timm.models.get_arch_name(name)).__module__ == "timm.models.resnet"


def _timm_entry(name: str) -> BackboneEntry | None:
    """The registry entry of timm model ``name`` (from its ``pretrained_cfg``), or None when timm lacks it."""
    if not _is_timm_name(name):
        return None
    cfg = {}
    if not name.startswith("hf-hub:"):  # a hub model's config is online only
        import timm

        try:
            found = timm.models.get_pretrained_cfg(name)
        except (RuntimeError, KeyError):
            found = None
        cfg = found.to_dict() if found is not None else {}
    head = cfg.get("classifier") or ()
    return BackboneEntry(name, functools.partial(_timm_backbone, name), None,
                         (head,) if isinstance(head, str) else tuple(head), str(cfg.get("first_conv") or ""),
                         tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD),
                         _timm_small_stem(name), timm=True)


def _timm_backbone(name: str, small_input: bool) -> nn.Module:
    """A timm backbone (``num_classes=0``); ``small_input`` gives a timm ResNet the small stem."""
    import timm

    if small_input and not _timm_small_stem(name):
        raise DataloupeError(f"small_input=true is not supported for timm model {name!r} (only for torchvision"
                             " and timm ResNets); set small_input=false to keep its own stem")
    net = timm.create_model(name, pretrained=False, num_classes=0)
    if small_input:
        # As for torchvision: a 3x3 stride-1 first conv and no max-pool (a deep stem keeps its 3x3
        # convs and only loses the first stride).
        if isinstance(net.conv1, nn.Conv2d):
            net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            net.conv1[0].stride = (1, 1)
        net.maxpool = nn.Identity()
    return net


def backbone_entry(name: str) -> BackboneEntry:
    """The registry entry of model ``name`` (registered, else timm's); unknown names raise
    with the list of known ones."""
    entry = _BACKBONES.get(name) or _timm_entry(name)
    if entry is None:
        raise DataloupeError(f"unknown model {name!r}; known: {', '.join(available_models())}"
                             " (or any timm model name when timm is installed)")
    return entry


def supports_small_input(name: str) -> bool:
    """Whether ``small_input=True`` is accepted for model ``name`` (torchvision/timm ResNets; convnets are small already).

    Example:
        >>> supports_small_input("resnet18"), supports_small_input("convnext_atto")
        (True, False)
    """
    name = parse_memory_name(name) or name
    parts = parse_ensemble_name(name)
    name = parts[1] if parts else name
    entry = _BACKBONES.get(name) or _timm_entry(name)
    return entry is not None and entry.small_input


def available_models() -> list[str]:
    """Names accepted by :func:`create_model` (timm adds its own when installed)."""
    return sorted(_BACKBONES)


def create_model(
    name: str,
    num_classes: int,
    *,
    small_input: bool = False,
    pretrained: str | Path | None = None,
) -> Classifier:
    """Build a classifier from the backbone registry (:func:`register_backbone`; timm's models too).

    Args:
        name: ``resnet18``/``resnet34``/``resnet50``/``resnet101``, ``convnet-s``/``-xs``/``-xxs``
            or any timm model name (``hf-hub:ORG/NAME`` too, online).
        num_classes: size of the head ``K``.
        small_input: use the 3x3 stride-1 stem without max-pool (torchvision and timm ResNets)
            for images <= 64 px; other timm models refuse it.
        pretrained: weights for :func:`load_pretrained` (a local file, or ``"true"`` for a
            timm model's published weights); the report is kept as ``model.weights_report``.

    Example:
        >>> m = create_model("resnet18", 2, small_input=True)
        >>> m(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 2])
    """
    if num_classes < 1:
        raise DataloupeError(f"num_classes must be >= 1, got {num_classes}")
    base = parse_memory_name(name)
    if base is not None:  # a trained classifier plus a memory of its training rows (models/_memory.py)
        if pretrained is not None:
            raise DataloupeError(f"model {name!r}: a memory classifier is made from a trained run (dataloupe knn), "
                                 "not from pretrained weights")
        model = create_model(base, num_classes, small_input=small_input)
        model.memory = MemoryVote(num_classes)
        model.model_name = name
        return model
    parts = parse_ensemble_name(name)
    entry = backbone_entry(parts[1] if parts else name)
    if parts:  # K members of one architecture as one model (models/_ensemble.py); their weights come from runs
        if pretrained is not None:
            raise DataloupeError(f"model {name!r}: an ensemble is made from trained runs (dataloupe ensemble), "
                                 "not from pretrained weights")
        built = [entry.build(small_input) for _ in range(parts[0])]
        widths = [entry.num_features if entry.num_features is not None else int(b.num_features) for b in built]
        backbone, nf = ConcatBackbone(built, widths), sum(widths)
    else:
        backbone = entry.build(small_input)
        nf = entry.num_features if entry.num_features is not None else int(backbone.num_features)
    model = Classifier(backbone, nf, num_classes)
    model.model_name, model.small_input = name, bool(small_input)
    model.is_timm = entry.timm
    # timm files load through timm's own loader, which knows their classifier
    model.source_head = () if entry.timm else entry.classifier
    if pretrained is not None:
        model.weights_report = load_pretrained(model, pretrained)
    return model
