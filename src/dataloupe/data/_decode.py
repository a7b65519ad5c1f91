"""Decode one image into the fixed-size uint8 array that training and inference share.

One function, used by the decoded cache, the streaming loader and the inference server,
so a model sees the same pixels at training and serving time.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

# Refuse decompression bombs outright (PIL only warns below 2x its limit).
MAX_PIXELS = 64_000_000


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (or are too large); the message says why."""


def _open(source: str | os.PathLike | bytes) -> Image.Image:
    try:
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise ImageDecodeError("empty file (0 bytes)")
            img = Image.open(io.BytesIO(source))
        else:
            if os.path.getsize(source) == 0:
                raise ImageDecodeError("empty file (0 bytes)")
            img = Image.open(source)
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ImageDecodeError(f"image too large: {w}x{h} pixels (limit {MAX_PIXELS})")
        return img
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"image too large: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"not a readable image: {e}") from e


def image_pixels(source: str | os.PathLike | bytes) -> int:
    """Width x height from the image's header, without decoding it (cheap; for admission control).

    Raises:
        ImageDecodeError: not an image, or more than :data:`MAX_PIXELS` pixels.
    """
    img = _open(source)
    try:
        w, h = img.size
        return int(w) * int(h)
    finally:
        img.close()


def decode_image(source: str | os.PathLike | bytes, size: int) -> np.ndarray:
    """Decode ``source`` to RGB, resize its short side to ``size`` and centre-crop.

    Args:
        source: a file path or the encoded bytes.
        size: output side in pixels.

    Returns:
        ``(size, size, 3)`` uint8 array.

    Raises:
        ImageDecodeError: the input is empty, truncated, not an image or too large.

    Example:
        >>> decode_image(Path("tests/data/cat.jpg"), 64).shape  # doctest: +SKIP
        (64, 64, 3)
    """
    img = _open(source)
    try:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # let libjpeg downscale by 2/4/8 for free
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"not a readable image: {e}") from e
