"""SAM-family models: registry, builders and safe weight loading."""

from medsamkit.models.loading import load_model
from medsamkit.models.registry import MODELS, ModelSpec, get_spec
from medsamkit.models.sam import Preprocessing, SamFamilyModel

__all__ = ["MODELS", "ModelSpec", "Preprocessing", "SamFamilyModel", "get_spec", "load_model"]
