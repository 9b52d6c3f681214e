"""MedNet of SAMAug (docs/protocols.md "SAMAug" step 4): the MONAI U-Net, its input (the image alone or fused
with SAM priors, identical at training and test time), random training crops, and reading a trained run.

Training lives in ``medsamkit.samaug.unet_train``, sliding-window inference and AJI scoring in
``medsamkit.samaug.unet_eval``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medsamkit.core.errors import InputError
from medsamkit.io.datasets import Case, open_dataset
from medsamkit.predictor import as_rgb_float
from medsamkit.samaug.unet_targets import N_CLASSES

CHECKPOINT = "last.pt"

LabelledInput = tuple[str, np.ndarray, np.ndarray]  # (image name, network input (H, W, 3), instance label)


def build_unet(channels: tuple[int, ...] = (16, 32, 64, 128, 256), strides: tuple[int, ...] = (2, 2, 2, 2),
               num_res_units: int = 2) -> torch.nn.Module:
    """The 2D MONAI U-Net: 3 input channels (RGB or image + priors) -> 3 class logits."""
    from monai.networks.nets import UNet

    if len(strides) != len(channels) - 1:
        raise InputError(f"U-Net needs len(strides) == len(channels) - 1, got {len(strides)} and {len(channels)}")
    return UNet(spatial_dims=2, in_channels=3, out_channels=N_CLASSES, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units)


def image_unit_rgb(image: np.ndarray, source: object | None = None) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] by SAMAug fusion's intensity rule (`fusion.unit_image`), so the baseline
    and the SAMAug U-Net see the same image; grey is repeated to 3 channels, alpha dropped."""
    from medsamkit.samaug.fusion import unit_image

    return np.ascontiguousarray(as_rgb_float(unit_image(image, source), source))


def _masks_file(priors_dir: Path, name: str) -> Path:
    """RUN/masks/NAME.npz of a `samaug priors` folder given as the folder itself or its priors/ subfolder."""
    file = f"{name.replace('/', '__')}.npz"
    here = priors_dir / "masks" / file
    return here if here.is_file() or priors_dir.name != "priors" else priors_dir.parent / "masks" / file


def network_input(image: np.ndarray, name: str, priors_dir: str | Path | None,
                  prior_normalisation: str = "clip") -> np.ndarray:
    """The U-Net's input for one image, identical at training and test time: float32 (H, W, 3).

    Without priors: the image in [0, 1]. With priors: SAMAug fusion (medsamkit.samaug.fusion) of the image
    with its saved seg and boundary priors ("clip": seg clipped to [0, 1]; "none": unclipped) or, for
    "paper", with the listing's priors recomputed from the folder's saved masks.
    """
    if priors_dir is None:
        return image_unit_rgb(image, name)
    from medsamkit.samaug.fusion import fuse, paper_priors
    from medsamkit.samaug.priors import load_masks, load_priors

    shape = np.asarray(image).shape[:2]
    if prior_normalisation == "paper":
        records, saved = load_masks(_masks_file(Path(priors_dir), name))
        if tuple(saved) != tuple(shape):
            raise InputError(f"{Path(priors_dir) / name}: masks of shape {saved} do not match image shape {shape}")
        seg, boundary = paper_priors(records, shape)
    else:
        seg, boundary = load_priors(priors_dir, name)
    if seg.shape != shape:
        raise InputError(f"{Path(priors_dir) / name}: prior shape {seg.shape} does not match image shape {shape}")
    return np.ascontiguousarray(fuse(image, seg, boundary, prior_normalisation), dtype=np.float32)


def _instance_label(case: Case) -> np.ndarray:
    if case.kind != "instance":
        raise InputError(f"{case.name}: the U-Net needs instance label maps, this dataset has {case.kind} labels")
    lab = np.asarray(case.label)
    if lab.ndim != 2:
        raise InputError(f"{case.name}: label map must be 2D, got shape {lab.shape}")
    return lab


def load_cases(spec: str, priors_dir: str | None, max_images: int | None = None,
               prior_normalisation: str = "clip") -> list[LabelledInput]:
    """(name, network input (H, W, 3), instance label) for every image of a data SPEC, sorted by name."""
    out = []
    for case in open_dataset(spec).cases(max_images):
        lab = _instance_label(case)
        out.append((case.name, network_input(case.image, case.name, priors_dir, prior_normalisation), lab))
    if not out:
        raise InputError(f"{spec}: no images found")
    return sorted(out, key=lambda c: c[0])


def pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    """``arr`` (H, W, ...) zero-padded at the bottom/right to at least ``size`` x ``size``."""
    pad_h, pad_w = max(0, size - arr.shape[0]), max(0, size - arr.shape[1])
    if not (pad_h or pad_w):
        return arr
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, widths)


def sample_batch(inputs: list[np.ndarray], targets: list[np.ndarray], rng: np.random.Generator, batch_size: int,
                 crop: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of random crops with random 90-degree rotations and flips: (B, 3, crop, crop), (B, crop, crop).

    Images are picked with probability proportional to their area, so each pixel is equally likely.
    """
    areas = np.array([t.size for t in targets], dtype=float)
    xs, ys = [], []
    for _ in range(batch_size):
        i = int(rng.choice(len(inputs), p=areas / areas.sum()))
        img, tgt = inputs[i], targets[i]
        y0 = int(rng.integers(0, img.shape[0] - crop + 1))
        x0 = int(rng.integers(0, img.shape[1] - crop + 1))
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        xi = np.rot90(img[y0:y0 + crop, x0:x0 + crop], k, axes=(0, 1))
        yi = np.rot90(tgt[y0:y0 + crop, x0:x0 + crop], k, axes=(0, 1))
        if flip:
            xi, yi = xi[:, ::-1], yi[:, ::-1]
        xs.append(np.moveaxis(xi, -1, 0))
        ys.append(yi)
    return np.ascontiguousarray(np.stack(xs)), np.ascontiguousarray(np.stack(ys))


def load_state(path: Path) -> dict:
    """A U-Net checkpoint's contents (tensors on CPU); InputError when missing or not one of ours."""
    if not path.is_file():
        raise InputError(f"{path}: no U-Net checkpoint (train one with `medsamkit unet train`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not {"model", "iteration", "config"} <= set(state):
            raise KeyError("model/iteration/config")
    except Exception as exc:  # a foreign or damaged file is the user's input, not our bug
        raise InputError(f"{path}: not a medsamkit U-Net checkpoint ({type(exc).__name__}: {exc})") from None
    return state


def load_run(run: str | Path, device: torch.device | None = None) -> tuple[torch.nn.Module, dict]:
    """The trained U-Net of a run folder (or a last.pt path) in eval mode, and its training config
    (with the checkpoint's ``iteration`` added)."""
    path = Path(run)
    state = load_state(path / CHECKPOINT if path.is_dir() else path)
    cfg = {**state["config"], "iteration": int(state["iteration"])}
    model = build_unet(tuple(cfg["channels"]), tuple(cfg["strides"]), cfg["num_res_units"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise InputError(f"{path}: checkpoint weights do not fit its U-Net settings ({exc})") from None
    model.eval()
    return model.to(device or torch.device("cpu")), cfg
