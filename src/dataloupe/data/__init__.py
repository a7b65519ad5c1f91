"""Table revision -> decoded cache -> batches and augmentation."""

from dataloupe.data._augment import (
    AugmentConfig,
    augment_batch,
    mix_transform,
    normalize_batch,
    sample_transform,
)
from dataloupe.data._batch_augment import batch_augment
from dataloupe.data._cache import DecodedCache, build_cache, cache_bytes, cache_path
from dataloupe.data._decode import MAX_PIXELS, ImageDecodeError, decode_image, image_pixels
from dataloupe.data._loader import (
    LoaderPlan,
    ShardSampler,
    WeightedEpochSampler,
    close_loaders,
    make_loader,
    open_cache,
    open_store,
    plan_loader,
)
from dataloupe.data._store import EncodedBatch, ImageStore, build_store, fragment_blocks, store_path
from dataloupe.data._samples import (MAX_UNREADABLE_SHARE, SampleSet, check_readable, missing_files,
                                     sample_set_from_table)

__all__ = [
    "MAX_PIXELS",
    "MAX_UNREADABLE_SHARE",
    "check_readable",
    "missing_files",
    "AugmentConfig",
    "DecodedCache",
    "EncodedBatch",
    "ImageStore",
    "ImageDecodeError",
    "LoaderPlan",
    "SampleSet",
    "ShardSampler",
    "WeightedEpochSampler",
    "augment_batch",
    "batch_augment",
    "build_cache",
    "build_store",
    "cache_bytes",
    "cache_path",
    "close_loaders",
    "decode_image",
    "fragment_blocks",
    "image_pixels",
    "make_loader",
    "mix_transform",
    "normalize_batch",
    "open_cache",
    "open_store",
    "plan_loader",
    "sample_set_from_table",
    "sample_transform",
    "store_path",
]
