"""Model factory by name (torchvision / timm) with an embedding hook and loud weight loading."""

from dataloupe.models._factory import (
    BackboneEntry,
    Classifier,
    available_models,
    backbone_entry,
    create_model,
    register_backbone,
    supports_small_input,
)
from dataloupe.models._ensemble import combine_heads, ensemble_name, parse_ensemble_name
from dataloupe.models._infer import infer, infer_views, merge_views
from dataloupe.models._memory import MemoryVote, memory_name, parse_memory_name
from dataloupe.models._precision import amp_dtype, native_bf16
from dataloupe.models._weights import HUB_SOURCES, WeightsReport, load_pretrained

__all__ = ["HUB_SOURCES", "BackboneEntry", "Classifier", "MemoryVote", "WeightsReport", "amp_dtype",
           "available_models", "backbone_entry", "combine_heads", "create_model", "ensemble_name", "infer",
           "infer_views", "load_pretrained", "memory_name", "merge_views", "native_bf16", "parse_ensemble_name",
           "parse_memory_name", "register_backbone", "supports_small_input"]
