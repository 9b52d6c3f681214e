"""Access to the official `segment_anything.modeling` classes, with or without torchvision.

`import segment_anything` runs a package __init__ that imports the predictor and the automatic mask
generator, which need torchvision; `segment_anything.modeling` itself needs only torch. Where torchvision
is not importable (CPU torch 2.13 here), the parent package is registered as a bare module whose
__path__ is the installed folder, so that its __init__ never runs (docs/facts.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from types import ModuleType

_PKG = "segment_anything"


def _torchvision_ok() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # e.g. "operator torchvision::nms does not exist" on a mismatched build
        return False
    return True


def sam_modeling() -> ModuleType:
    """Return the `segment_anything.modeling` module (ImageEncoderViT, PromptEncoder, MaskDecoder, ...)."""
    if f"{_PKG}.modeling" in sys.modules:
        return sys.modules[f"{_PKG}.modeling"]
    if _PKG not in sys.modules and _torchvision_ok():
        try:
            return importlib.import_module(f"{_PKG}.modeling")
        except Exception:
            sys.modules.pop(_PKG, None)
    if _PKG not in sys.modules:
        spec = importlib.util.find_spec(_PKG)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the `segment-anything` package is not installed (pip install segment-anything)")
        bare = types.ModuleType(_PKG)
        bare.__path__ = list(spec.submodule_search_locations)
        bare.__file__ = spec.origin
        sys.modules[_PKG] = bare
    return importlib.import_module(f"{_PKG}.modeling")
