"""Model factory by name (torchvision / timm) with an embedding hook."""

from dataloupe.models._factory import Classifier, available_models, create_model, load_pretrained

__all__ = ["Classifier", "available_models", "create_model", "load_pretrained"]
