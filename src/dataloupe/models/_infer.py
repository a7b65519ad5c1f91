"""The one forward pass of evaluation, ``collect`` and serving (airbench's ``infer``).

``infer(model, batches, tta=...)`` runs a classifier over normalised ``(N, 3, S, S)``
batches and yields, per batch, logits whose softmax is the prediction. With ``tta`` (the
recipe's ``tta_hflip``) the prediction is the mean softmax over the image and its
horizontal mirror, so the validation top-1 a run reports is what ``collect`` stores and
what the server answers. Works on torch tensors (a ``Classifier``) and on numpy arrays (an
exported ONNX / TorchScript forward function) alike.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np

_EPS = 1e-12  # floor of a mean probability before its log


def infer(model: Callable, batches: Iterable, *, tta: bool = False, embedding: bool = False) -> Iterator:
    """Yield the model's prediction for each batch, in order.

    Args:
        model: ``x -> logits (N, K)``, or with ``embedding`` ``x -> (logits, embeddings (N, D))``;
            a torch module (already in eval mode, under whatever autocast the caller set) or
            a numpy function.
        batches: normalised inputs ``(N, 3, S, S)``, torch or numpy; an item may also be a
            tuple ``(x, *extra)`` whose extras (labels, row positions) are passed through.
        tta: average the image and its horizontal mirror: the logits are then the log of
            the mean softmax (float32), the embedding the mean embedding.
        embedding: also return embeddings.

    Yields:
        ``logits``, or ``(logits, embeddings)`` with ``embedding``; followed by the item's
        extras when it was a tuple: ``(logits, *extra)`` / ``(logits, embeddings, *extra)``.

    Example:
        >>> f = lambda x: x.reshape(len(x), -1)[:, :2]   # a "model": logits = two pixels
        >>> x = np.array([[[[1.0, 0.0]]]], np.float32)   # (1, 1, 1, 2): mirror swaps them
        >>> [np.round(l, 3).tolist() for l in infer(f, [x])]
        [[[1.0, 0.0]]]
        >>> [np.exp(l).round(3).tolist() for l in infer(f, [x], tta=True)]
        [[[0.5, 0.5]]]
    """
    for outs, *extra in infer_views(model, batches, tta=tta):
        out = merge_views(outs, embedding=embedding)
        if extra:
            yield (*out, *extra) if embedding else (out, *extra)
        else:
            yield out


def infer_views(model: Callable, batches: Iterable, *, tta: bool = False) -> Iterator[tuple]:
    """The views :func:`infer` averages, unmerged: yields ``(outs, *extra)`` per batch, ``outs`` the
    model's raw output on the image (and, with ``tta``, on its mirror), in that order.

    ``merge_views(outs, ...)`` turns them into :func:`infer`'s prediction; a caller that keeps the
    views (``collect``) can later put a head on top of them (a memory's vote,
    :func:`dataloupe.train.memory_run`) and merge that the same way, without another forward pass.
    """
    for item in batches:
        x, extra = (item[0], tuple(item[1:])) if isinstance(item, tuple) else (item, ())
        outs = [model(x), model(_mirror(x))] if tta else [model(x)]
        yield (outs, *extra)


def merge_views(outs: list, *, embedding: bool):
    """One prediction from the views of :func:`infer_views`: a single view as it is; two views as the
    log of their mean softmax (float32) and, with ``embedding``, their mean embedding."""
    if len(outs) == 1:
        return outs[0]
    if len(outs) != 2:
        raise ValueError(f"merge_views takes the image and its mirror, got {len(outs)} views")
    out, out2 = outs
    (l1, e1), (l2, e2) = (out, out2) if embedding else ((out, None), (out2, None))
    if _is_torch(l1):
        import torch  # noqa: PLC0415 (numpy callers need no torch)

        probs = (torch.softmax(l1.float(), 1) + torch.softmax(l2.float(), 1)) / 2
        logits = probs.clamp_min(_EPS).log()
        return (logits, (e1.float() + e2.float()) / 2) if embedding else logits
    probs = (_softmax(l1) + _softmax(l2)) / 2
    logits = np.log(np.maximum(probs, _EPS)).astype(np.float32)
    if embedding:
        return logits, ((np.asarray(e1, np.float32) + np.asarray(e2, np.float32)) / 2)
    return logits


def _mirror(x):
    """The batch flipped left-right (the last axis is width)."""
    if _is_torch(x):
        return x.flip(-1)
    return np.ascontiguousarray(x[..., ::-1])


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
