"""Model zoo: built-in architectures, optional torchvision/timm, and operator-registered factories."""

from search_spaces.zoo.registry import ModelSpecLike, UnknownModelError, available_models, build_model

__all__ = ["ModelSpecLike", "UnknownModelError", "available_models", "build_model"]
