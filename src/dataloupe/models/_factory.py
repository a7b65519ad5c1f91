"""Create image classifiers by name; every model exposes its penultimate-layer embedding.

torchvision ResNets are built in; any other name is looked up in timm when timm is
installed. Weights are never downloaded: ``pretrained`` is a local file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm

from dataloupe.models._convnet import CONVNETS, ConvNet
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
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_classes)
        self.num_features = num_features
        self.num_classes = num_classes

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


def _timm_backbone(name: str, small_input: bool) -> tuple[nn.Module, int] | None:
    try:
        import timm
    except ImportError:
        return None
    if not timm.is_model(name):
        return None
    net = timm.create_model(name, pretrained=False, num_classes=0)
    return net, int(net.num_features)


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
        name: ``resnet18``/``resnet34``/``resnet50``/``resnet101`` or any timm model name.
        num_classes: size of the head ``K``.
        small_input: use the 3x3 stride-1 stem (torchvision ResNets) for images <= 64 px.
        pretrained: a local state dict or checkpoint file to start from; keys that do not
            fit (e.g. a head of another size) are skipped.

    Example:
        >>> m = create_model("resnet18", 2, small_input=True)
        >>> m(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 2])
    """
    if num_classes < 1:
        raise DataloupeError(f"num_classes must be >= 1, got {num_classes}")
    if name in _TORCHVISION:
        backbone, nf = _torchvision_backbone(name, small_input)
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
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def load_pretrained(model: Classifier, path: str | Path) -> list[str]:
    """Load weights from a local file into ``model``; returns the keys that were skipped.

    Accepts a dataloupe checkpoint (``{"model": state_dict, ...}``), a plain state dict of
    a :class:`Classifier`, or a plain torchvision/timm state dict of the backbone.
    """
    path = Path(path)
    if not path.is_file():
        raise DataloupeError(f"pretrained weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise DataloupeError(f"{path} holds no state dict")
    if not any(k.startswith(("backbone.", "head.")) for k in state):
        # A bare backbone state dict (torchvision/timm naming): map it under backbone.
        state = {f"backbone.{k}": v for k, v in state.items()}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    model.load_state_dict(usable, strict=False)
    return skipped
