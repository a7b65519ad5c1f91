"""Batch prediction over image files: decode, stack, one forward per batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataloupe.data import ImageDecodeError, decode_image
from dataloupe.serve._bundle import ModelBundle, top_k


def predict_files(
    bundle: ModelBundle,
    paths: list[str | Path],
    *,
    top_k_count: int = 5,
    batch_size: int = 32,
) -> list[dict]:
    """Predict every image in ``paths``; unreadable files get an error record, not an exception.

    Args:
        bundle: the loaded model.
        paths: image files, in the order results are wanted.
        top_k_count: how many classes to return per image (capped at K).
        batch_size: images per forward pass.

    Returns:
        One dict per path, in order: ``{"image", "predictions": [{"label", "probability"}, ...]}``
        or ``{"image", "error": "<why>"}``.

    Example:
        >>> predict_files(load_bundle("a"), ["x.jpg"], top_k_count=2)  # doctest: +SKIP
        [{'image': 'x.jpg', 'predictions': [{'label': 'muffin', 'probability': 0.93}, ...]}]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[dict] = [{"image": str(p)} for p in paths]
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        probs = bundle.predict_proba(np.stack([x for _, x in pending]))
        for (i, _), preds in zip(pending, top_k(probs, bundle.classes, top_k_count)):
            results[i]["predictions"] = preds
        pending.clear()

    for i, p in enumerate(paths):
        path = Path(p)
        if not path.is_file():
            results[i]["error"] = "file not found" if not path.exists() else "not a file"
            continue
        try:
            pending.append((i, bundle.preprocess(decode_image(path, bundle.image_size))))
        except ImageDecodeError as e:
            results[i]["error"] = str(e)
            continue
        if len(pending) >= batch_size:
            flush()
    flush()
    return results
