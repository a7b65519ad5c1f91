"""Several trained classifiers of one architecture as one :class:`Classifier`.

The ensemble's backbone runs every member's backbone and concatenates their embeddings; its
head holds the members' heads side by side, each scaled by ``1/K``, so its logits are the mean of
the members' logits. Being an ordinary ``Classifier`` (model name ``ensemble-K:<base>``), it goes
through ``collect``, the analysis, serving and export (ONNX, TorchScript) like any other model.
Logit averaging rather than probability averaging: on the demo's two scenarios it scored the
same or 0.05-0.1 points higher (bench/RESULTS.md), and it keeps the model a single forward.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from dataloupe.project import DataloupeError

_NAME = re.compile(r"^ensemble-(\d+):(.+)$")


def ensemble_name(members: int, base: str) -> str:
    """The model name of ``members`` networks of architecture ``base``: ``ensemble-K:<base>``."""
    return f"ensemble-{members}:{base}"


def parse_ensemble_name(name: str) -> tuple[int, str] | None:
    """``(K, base)`` of an ``ensemble-K:<base>`` model name, None for any other name."""
    m = _NAME.match(name)
    if not m:
        return None
    k = int(m.group(1))
    if k < 2 or parse_ensemble_name(m.group(2)) is not None:
        raise DataloupeError(f"model {name!r}: an ensemble has 2 or more members of one plain architecture")
    return k, m.group(2)


class ConcatBackbone(nn.Module):
    """The members' backbones, run on the same input; their embeddings concatenated."""

    def __init__(self, members: list[nn.Module], num_features: list[int]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.member_features = list(num_features)
        self.num_features = sum(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.members], dim=1)


def combine_heads(members: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of the head whose logits are the mean of the members' logits on the
    concatenated embedding: the weights side by side, each ``/ K``; the mean bias."""
    k = len(members)
    weight = torch.cat([h.weight.detach() / k for h in members], dim=1)
    bias = torch.stack([h.bias.detach() for h in members]).mean(0)
    return weight, bias
