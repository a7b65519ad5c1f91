"""Create image classifiers by name; every model exposes its penultimate-layer embedding.

torchvision ResNets and the small ConvNets are built in; any other name is looked up in
timm when timm is installed (``hf-hub:ORG/NAME`` names too, online). Weights load through
:func:`~dataloupe.models.load_pretrained`: a local file, or ``"true"`` for timm's own
download of a timm model's published weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm

from dataloupe.models._convnet import CONVNETS, ConvNet
from dataloupe.models._weights import load_pretrained
from dataloupe.project import DataloupeError

_TORCHVISION: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "resnet101": tvm.resnet101,
}


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

    def forward(self, x: torch.Tensor, return_embedding: bool = False):
        emb = self.backbone(x)
        logits = self.head(emb)
        return (logits, emb) if return_embedding else logits

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def _torchvision_backbone(name: str, small_input: bool) -> tuple[nn.Module, int]:
    net = _TORCHVISION[name](weights=None)
    if small_input:
        # CIFAR-style stem for images <= 64 px: 3x3 stride-1 conv and no max-pool, so a
        # 32 px image is not reduced to 1x1 before the last stage.
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    num_features = net.fc.in_features
    net.fc = nn.Identity()
    return net, num_features


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


def _timm_backbone(name: str, small_input: bool) -> tuple[nn.Module, int] | None:
    if not _is_timm_name(name):
        return None
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
    return net, int(net.num_features)


def supports_small_input(name: str) -> bool:
    """Whether ``small_input=True`` changes model ``name`` (torchvision/timm ResNets; convnets are small already).

    Example:
        >>> supports_small_input("resnet18"), supports_small_input("convnext_atto")
        (True, False)
    """
    if name in _TORCHVISION or name in CONVNETS:
        return True
    return _is_timm_name(name) and _timm_small_stem(name)


def available_models() -> list[str]:
    """Names accepted by :func:`create_model` (timm adds its own when installed)."""
    return sorted(_TORCHVISION) + sorted(CONVNETS)


def create_model(
    name: str,
    num_classes: int,
    *,
    small_input: bool = False,
    pretrained: str | Path | None = None,
) -> Classifier:
    """Build a classifier.

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
    source_head: tuple[str, ...] = ()
    if name in _TORCHVISION:
        backbone, nf = _torchvision_backbone(name, small_input)
        source_head = ("fc",)
    elif name in CONVNETS:
        backbone = ConvNet(CONVNETS[name])
        nf = backbone.num_features
    else:
        found = _timm_backbone(name, small_input)
        if found is None:
            raise DataloupeError(
                f"unknown model {name!r}; known: {', '.join(available_models())}"
                " (or any timm model name when timm is installed)"
            )
        backbone, nf = found
    model = Classifier(backbone, nf, num_classes)
    model.model_name, model.small_input = name, bool(small_input)
    model.is_timm = name not in _TORCHVISION and name not in CONVNETS
    model.source_head = source_head
    if pretrained is not None:
        model.weights_report = load_pretrained(model, pretrained)
    return model
