"""A classifier that also asks its training rows: a k-nearest-neighbour vote beside its head.

A memory classifier (model name ``knn:<base>``) is a trained classifier plus a memory of
training-row embeddings with their classes (the labeled rows, and the undefined rows its base
was most sure of, with its own prediction: :func:`dataloupe.train.memory_run`). Its
prediction is the mean of the head's softmax and the vote of the ``k`` memory rows nearest in
cosine similarity, each weighted ``exp(similarity / temperature)`` (the weighted kNN of Wu et
al. 2018, the self-supervised kNN monitor). The head draws one linear boundary per class; the
vote follows the shape of the pool's clusters, which a head trained on a few hundred labels
cannot. Measured on the demo's six scenarios: +0.54 points over the ensemble alone, every one
up; on chihuahua-muffin +0.5 to +1.6 (bench/RESULTS.md).

Written by hand (a dozen lines): it must live inside the model so that evaluation, ``collect``,
serving and ONNX/TorchScript export all compute the same prediction from one checkpoint, which
a scikit-learn ``KNeighborsClassifier`` beside the network would not.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dataloupe.project import DataloupeError

PREFIX = "knn:"


def memory_name(base: str) -> str:
    """The model name of a memory classifier over architecture ``base``: ``knn:<base>``."""
    return PREFIX + base


def parse_memory_name(name: str) -> str | None:
    """The base architecture of a ``knn:<base>`` model name, None for any other name."""
    if not name.startswith(PREFIX):
        return None
    base = name[len(PREFIX):]
    if not base or base.startswith(PREFIX):
        raise DataloupeError(f"model {name!r}: a memory classifier wraps one trained classifier (knn:<model>)")
    return base


class MemoryVote(nn.Module):
    """The vote of the memory: ``forward(logits, embedding)`` -> the log of the mean of the head's
    softmax and the neighbours' weighted class shares (logits whose softmax is the blend).

    Buffers (saved in the checkpoint; loading resizes them to the saved memory): ``keys``
    ``(N, D)`` L2-normalised embeddings, ``labels`` ``(N,)`` class indices, ``settings``
    ``[k, temperature, weight]`` (the vote's share is ``weight / (1 + weight)``).
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("keys", torch.zeros(0, 0))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("settings", torch.tensor([20.0, 0.1, 1.0]))

    def fill(self, keys: torch.Tensor, labels: torch.Tensor, *, k: int, temperature: float, weight: float) -> None:
        if keys.ndim != 2 or len(keys) != len(labels) or len(keys) == 0:
            raise DataloupeError(f"a memory needs one or more (embedding, class) rows, got {tuple(keys.shape)} keys "
                                 f"and {tuple(labels.shape)} labels")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise DataloupeError(f"memory classes must be in 0..{self.num_classes - 1}")
        if k < 1 or temperature <= 0 or weight < 0:
            raise DataloupeError(f"memory vote needs k >= 1, temperature > 0 and weight >= 0; got k={k}, "
                                 f"temperature={temperature}, weight={weight}")
        self.keys = F.normalize(keys.detach().float(), dim=1)
        self.labels = labels.detach().long()
        self.settings = torch.tensor([float(min(k, len(keys))), float(temperature), float(weight)])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("keys", "labels"):  # the saved memory's size, whatever this one was built with
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, logits: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        if len(self.keys) == 0:
            raise DataloupeError("this memory classifier's memory is empty (build it with dataloupe knn)")
        k, temperature, weight = int(self.settings[0]), float(self.settings[1]), float(self.settings[2])
        with torch.autocast(embedding.device.type, enabled=False):  # similarities in float32: bf16 ties neighbours
            query = F.normalize(embedding.float(), dim=1)
            top, idx = (query @ self.keys.T).topk(k, dim=1)
            w = torch.exp((top - top[:, :1]) / temperature)  # the row's largest weight is 1: no overflow
            votes = (w.unsqueeze(2) * F.one_hot(self.labels[idx], self.num_classes).float()).sum(1)
            votes = votes / votes.sum(1, keepdim=True)
            blend = (torch.softmax(logits.float(), 1) + weight * votes) / (1.0 + weight)
        return blend.clamp_min(1e-12).log()
