"""Model factory by name (torchvision / timm) with an embedding hook and loud weight loading."""

from dataloupe.models._factory import Classifier, available_models, create_model, supports_small_input
from dataloupe.models._weights import HUB_SOURCES, WeightsReport, load_pretrained

__all__ = ["HUB_SOURCES", "Classifier", "WeightsReport", "available_models", "create_model", "load_pretrained",
           "supports_small_input"]
