"""SAMAug prior maps: segmentation and boundary priors from everything-mode masks, fused into the image.

Outputs of `compute_priors` (per image NAME, "/" in case names becomes "__"):
  masks/NAME.npz    packed mask bits + boxes, areas, predicted IoU, stability (see `save_masks`)
  priors/NAME.npz   seg (float32 H,W: sum of stability scores), boundary (uint8 H,W in {0,1})
  priors/NAME_seg.png       uint16 = round(seg * 1000) (milli-units, clipped at 65535)
  priors/NAME_boundary.png  uint16 = boundary * 65535
  visuals/NAME.png  image | seg prior | boundary prior | fused (the paper's Fig. 2 layout)
  index.json        settings and one entry per finished image
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError, where
from medsamkit.samaug.everything import EverythingConfig, MaskRecord, generate_masks

NORMALISATIONS = ("clip", "none")
SEG_PNG_SCALE = 1000.0


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2 or shape[0] < 1 or shape[1] < 1:
        raise InputError(f"prior shape must be (H, W), got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def segmentation_prior(records: list[MaskRecord], shape: tuple[int, ...]) -> np.ndarray:
    """float32 (H, W): for every mask, its stability score added on its pixels (overlaps can exceed 1)."""
    h, w = _check_shape(shape)
    prior = np.zeros((h, w), dtype=np.float32)
    for r in records:
        x0, y0, x1, y1 = r.box
        prior[y0 : y1 + 1, x0 : x1 + 1][r.crop] += np.float32(r.stability_score)
    return prior


def boundary_prior(records: list[MaskRecord], shape: tuple[int, ...], thickness: int = 2) -> np.ndarray:
    """uint8 (H, W) in {0,1}: union of the masks' outer boundaries, each dilated by a disk of radius
    ``thickness - 1`` (thickness 1: the one-pixel outer ring only)."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk
    from skimage.segmentation import find_boundaries

    h, w = _check_shape(shape)
    if thickness < 1:
        raise InputError(f"boundary thickness must be >= 1, got {thickness}")
    out = np.zeros((h, w), dtype=bool)
    pad = thickness + 1
    footprint = disk(thickness - 1) if thickness > 1 else None
    for r in records:
        x0, y0, x1, y1 = r.box
        local = np.pad(r.crop, pad)
        ring = find_boundaries(local, mode="outer")
        if footprint is not None:
            ring = ndi.binary_dilation(ring, footprint)
        # Paste the padded window, clipped where it runs over the image border.
        ty0, tx0 = y0 - pad, x0 - pad
        cy0, cx0 = max(ty0, 0), max(tx0, 0)
        cy1, cx1 = min(ty0 + local.shape[0], h), min(tx0 + local.shape[1], w)
        out[cy0:cy1, cx0:cx1] |= ring[cy0 - ty0 : cy1 - ty0, cx0 - tx0 : cx1 - tx0]
    return out.astype(np.uint8)


def unit_image(image: np.ndarray, source: object | None = None) -> np.ndarray:
    """float32 in [0,1], the one intensity rule of SAMAug fusion and of the U-Net input (train and test alike).

    uint8 is divided by 255 (a fixed scale keeps stains comparable across slides); any other image already
    inside [0,1] is kept; everything else (12/16-bit microscopy, CT, floats in other ranges) is min-max
    scaled per image, so low-range uint16 data is not left near black. A constant image becomes zeros.
    """
    arr = np.asarray(image)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{where(source)}unsupported image dtype {arr.dtype}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255)
    out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        raise InputError(f"{where(source)}image contains {int(bad.sum())} NaN/inf values")
    colour = out[..., :3] if out.ndim == 3 and out.shape[-1] == 4 else out  # alpha is dropped, not scaled by
    lo, hi = (float(colour.min()), float(colour.max())) if colour.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return out
    return (out - lo) / np.float32(hi - lo) if hi > lo else np.zeros_like(out)


def fuse(
    image: np.ndarray, seg_prior: np.ndarray, boundary: np.ndarray, normalisation: str = "clip"
) -> np.ndarray:
    """SAMAug input: float32 (H, W, 3).

    The image is brought to [0,1] by `unit_image`; RGB(A, alpha dropped): channel
    1 += seg prior, channel 2 += boundary prior; grey (H,W) or (H,W,1): [grey, seg prior, boundary prior].
    normalisation "clip" (default) clips the seg prior to [0,1] before adding, so every channel lies in
    [0, 2] whatever the mask overlaps; "none" adds it raw (the paper's listing). Use the same for train/test.
    """
    if normalisation not in NORMALISATIONS:
        raise InputError(f"unknown normalisation {normalisation!r}; choose one of: {', '.join(NORMALISATIONS)}")
    img = unit_image(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
        raise InputError(f"expected a grey, RGB or RGBA image, got shape {np.shape(image)}")
    seg = np.asarray(seg_prior, dtype=np.float32)
    bnd = np.asarray(boundary, dtype=np.float32)
    if seg.shape != img.shape[:2] or bnd.shape != img.shape[:2]:
        raise InputError(
            f"prior shapes {seg.shape} / {bnd.shape} do not match image shape {img.shape[:2]}"
        )
    if normalisation == "clip":
        seg = np.clip(seg, 0, 1)
    if img.ndim == 2:
        return np.stack([img, seg, bnd], axis=-1).astype(np.float32)
    out = img[..., :3].copy()
    out[..., 1] += seg
    out[..., 2] += bnd
    return out


# --- files -----------------------------------------------------------------------------------------------
def save_masks(path: Path, records: list[MaskRecord], shape: tuple[int, int]) -> Path:
    """Write records as one npz: `bits` (all crops' pixels row-major, packed), `boxes` (N,4) int32 inclusive,
    `area`, `predicted_iou`, `stability_score` (N,) and `shape` (H, W)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = np.concatenate([r.crop.ravel() for r in records]) if records else np.zeros(0, dtype=bool)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(
        tmp,
        bits=np.packbits(flat),
        nbits=np.int64(flat.size),
        boxes=np.array([r.box for r in records], dtype=np.int32).reshape(-1, 4),
        area=np.array([r.area for r in records], dtype=np.int64),
        predicted_iou=np.array([r.predicted_iou for r in records], dtype=np.float32),
        stability_score=np.array([r.stability_score for r in records], dtype=np.float32),
        shape=np.array(shape[:2], dtype=np.int64),
    )
    tmp.replace(path)  # atomic: a half-written file never looks finished to a resumed run
    return path


def load_masks(path: str | Path) -> tuple[list[MaskRecord], tuple[int, int]]:
    """Records and image shape from a `save_masks` file; InputError when missing or malformed."""
    path = Path(path)
    try:
        with np.load(path) as z:
            bits = np.unpackbits(z["bits"], count=int(z["nbits"])).astype(bool)
            boxes, area = z["boxes"].astype(int), z["area"]
            piou, stab, shape = z["predicted_iou"], z["stability_score"], tuple(int(v) for v in z["shape"])
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: not a readable masks file ({exc})") from None
    records, pos = [], 0
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        n = (y1 - y0 + 1) * (x1 - x0 + 1)
        crop = bits[pos : pos + n].reshape(y1 - y0 + 1, x1 - x0 + 1)
        pos += n
        records.append(MaskRecord(crop, (x0, y0, x1, y1), int(area[i]), float(piou[i]), float(stab[i])))
    if pos != bits.size:
        raise InputError(f"{path}: mask bits do not match the boxes ({bits.size} bits, {pos} expected)")
    return records, shape


def _save_priors(folder: Path, name: str, seg: np.ndarray, boundary: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    seg16 = np.clip(np.round(seg * SEG_PNG_SCALE), 0, 65535).astype(np.uint16)
    Image.fromarray(seg16).save(folder / f"{name}_seg.png")
    Image.fromarray(boundary.astype(np.uint16) * np.uint16(65535)).save(folder / f"{name}_boundary.png")
    tmp = folder / f"{name}.tmp.npz"
    np.savez_compressed(tmp, seg=seg.astype(np.float32), boundary=boundary.astype(np.uint8))
    tmp.replace(folder / f"{name}.npz")


def _priors_file(priors_dir: Path, image_name: str) -> Path:
    name = image_name.replace("/", "__")
    nested = priors_dir / "priors" / f"{name}.npz"
    return nested if nested.is_file() or not (priors_dir / f"{name}.npz").is_file() else priors_dir / f"{name}.npz"


def load_priors(priors_dir: str | Path, image_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(seg float32 (H,W), boundary uint8 (H,W)) for one image of a `compute_priors` output folder
    (the folder itself or its priors/ subfolder)."""
    path = _priors_file(Path(priors_dir), image_name)
    if not path.is_file():
        raise InputError(f"{path}: no priors for image {image_name!r} (run `medsamkit samaug priors` first)")
    try:
        with np.load(path) as z:
            seg, boundary = z["seg"].astype(np.float32), z["boundary"].astype(np.uint8)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: not a readable priors file ({exc})") from None
    if seg.shape != boundary.shape or seg.ndim != 2:
        raise InputError(f"{path}: seg {seg.shape} and boundary {boundary.shape} priors disagree")
    return seg, boundary


def visual_panel(image: np.ndarray, seg: np.ndarray, boundary: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """uint8 (H, 4W, 3): image | seg prior (scaled by its max) | boundary prior | fused (clipped to [0,1])."""
    from medsamkit.io.images import to_uint8_rgb

    def grey(x: np.ndarray, top: float) -> np.ndarray:
        g = (np.clip(x / max(top, 1e-8), 0, 1) * 255).round().astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)

    fused8 = (np.clip(fused, 0, 1) * 255).round().astype(np.uint8)
    return np.concatenate([to_uint8_rgb(image), grey(seg, float(seg.max())), grey(boundary, 1.0), fused8], axis=1)


# --- engine ---------------------------------------------------------------------------------------------
@dataclass
class PriorsConfig:
    """What `medsamkit samaug masks|priors` runs: data SPEC -> out folder (see the module docstring)."""

    data: str
    out: str
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    everything: EverythingConfig = field(default_factory=EverythingConfig)
    max_images: int | None = None
    write_priors: bool = True  # False: masks only (`samaug masks`)
    boundary_thickness: int = 2
    normalisation: str = "clip"  # for the fused image in visuals/ (the U-Net engine fuses on the fly)
    progress: bool = True


def _outputs(out: Path, name: str, cfg: PriorsConfig) -> list[Path]:
    paths = [out / "masks" / f"{name}.npz"]
    if cfg.write_priors:
        paths += [out / "priors" / f"{name}.npz", out / "visuals" / f"{name}.png"]
    return paths


def _finished(out: Path, name: str, cfg: PriorsConfig) -> bool:
    """Whether all outputs of an image exist and its npz files load (a resumed run skips it)."""
    paths = _outputs(out, name, cfg)
    if not all(p.is_file() for p in paths):
        return False
    try:
        load_masks(paths[0])
        if cfg.write_priors:
            load_priors(out, name)
    except InputError:
        return False
    return True


def _saved_masks(path: Path, shape: tuple[int, int]) -> list[MaskRecord] | None:
    """Records of a valid masks file for an image of `shape`, else None (missing, broken or another size)."""
    if not path.is_file():
        return None
    try:
        records, saved_shape = load_masks(path)
    except InputError:
        return None
    return records if saved_shape == tuple(shape) else None


def compute_priors(cfg: PriorsConfig, predictor=None) -> dict:
    """Everything-mode masks (and priors, visuals) for every image of `cfg.data`; returns the index dict.

    Resumable: images whose outputs exist and load are skipped (reported as "skipped" in the index); an
    image with a valid masks file but missing priors reuses the masks (`samaug masks` then `samaug priors`).
    """
    from tqdm import tqdm

    from medsamkit.io.datasets import open_dataset
    from medsamkit.io.images import write_mask

    if cfg.normalisation not in NORMALISATIONS:
        raise InputError(f"unknown normalisation {cfg.normalisation!r}; choose one of: {', '.join(NORMALISATIONS)}")
    dataset = open_dataset(cfg.data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    entries: dict[str, dict] = {}
    if index_path.is_file():
        try:
            entries = {e["name"]: e for e in json.loads(index_path.read_text()).get("images", [])}
        except (ValueError, KeyError, TypeError):
            entries = {}
    total = len(dataset) if cfg.max_images is None else min(len(dataset), cfg.max_images)
    bar = tqdm(dataset.cases(cfg.max_images), total=total, desc="samaug", unit="img", disable=not cfg.progress)
    for case in bar:
        name = case.name.replace("/", "__")
        if _finished(out, name, cfg):
            entries.setdefault(name, {"name": name})["skipped"] = True
            continue
        start = time.perf_counter()
        shape = case.image.shape[:2]
        records = _saved_masks(out / "masks" / f"{name}.npz", shape)  # e.g. from an earlier `samaug masks`
        if records is None:
            if predictor is None:
                from medsamkit.models import load_model
                from medsamkit.predictor import Predictor

                predictor = Predictor(load_model(cfg.model, cfg.checkpoint, cfg.device))
            records = generate_masks(predictor, case.image, cfg.everything)
            save_masks(out / "masks" / f"{name}.npz", records, shape)
        entry = {"name": name, "masks": len(records), "skipped": False}
        if cfg.write_priors:
            seg = segmentation_prior(records, shape)
            bnd = boundary_prior(records, shape, cfg.boundary_thickness)
            _save_priors(out / "priors", name, seg, bnd)
            fused = fuse(case.image, seg, bnd, cfg.normalisation)
            write_mask(out / "visuals" / f"{name}.png", visual_panel(case.image, seg, bnd, fused))
            entry["seg_prior_max"] = round(float(seg.max()), 4)
            entry["boundary_fraction"] = round(float(bnd.mean()), 4)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        entries[name] = entry
        _write_index(index_path, cfg, entries)
    index = _write_index(index_path, cfg, entries)
    return index


def _write_index(path: Path, cfg: PriorsConfig, entries: dict[str, dict]) -> dict:
    settings = asdict(cfg)
    index = {"settings": settings, "images": sorted(entries.values(), key=lambda e: e["name"])}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=2, default=str) + "\n")
    tmp.replace(path)
    return index
