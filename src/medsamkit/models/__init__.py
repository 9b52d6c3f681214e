"""SAM-family models: registry, builders and safe weight loading."""

from medsamkit.models.registry import MODELS, ModelSpec, get_spec, load_model
from medsamkit.models.sam import Preprocessing, SamFamilyModel

__all__ = ["MODELS", "ModelSpec", "Preprocessing", "SamFamilyModel", "get_spec", "load_model"]
