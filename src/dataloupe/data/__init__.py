"""Table revision -> decoded cache -> batches and augmentation."""

from dataloupe.data._decode import MAX_PIXELS, ImageDecodeError, decode_image

__all__ = ["MAX_PIXELS", "ImageDecodeError", "decode_image"]
