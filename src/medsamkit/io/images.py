"""2D image and mask files: read PNG/TIF/JPG/BMP (and .npy) with clear errors; write masks and overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsamkit.core.atomic import write_atomic
from medsamkit.core.errors import InputError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".npy")


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2D image (H,W) or (H,W,C) in its native dtype; InputError when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                arr = np.asarray(im)
    except Exception as exc:  # any decoder failure is the user's file, not our bug
        raise InputError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise InputError(f"{path}: expected a 2D grey/RGB/RGBA image, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{path}: empty image")
    return arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr


def image_shape(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file as ``read_image`` would return it, without decoding the pixels where the
    format allows (TIFF, PNG/JPG/BMP headers)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
            channel_first = len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4)
            return tuple(int(v) for v in (shape[1:3] if channel_first else shape[:2]))
        if suffix != ".npy":
            from PIL import Image

            with Image.open(path) as im:
                return int(im.height), int(im.width)
    except Exception as exc:  # a broken file is the user's, reported with its name
        raise InputError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    return tuple(read_image(path).shape[:2])


def read_label(path: str | Path) -> np.ndarray:
    """Read an instance or class label map (2D integer array)."""
    arr = read_image(path)
    if arr.ndim == 3:
        if np.all(arr[..., :3] == arr[..., :1]):
            arr = arr[..., 0]
        else:
            raise InputError(f"{Path(path)}: label map must be single-channel, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.isnan(arr).any() or np.any(arr != np.round(arr)):
            raise InputError(f"{Path(path)}: label map must hold integer labels (dtype {arr.dtype})")
        arr = arr.astype(np.int64)
    return arr


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of a 2D uint8/uint16 array or an (H, W, 3|4) uint8 array (fast compression: written on every change)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Write a label/mask as PNG (uint8 when labels fit, else uint16) or .npy, atomically; returns the path."""
    path = Path(path)
    mask = np.asarray(mask)
    if path.suffix.lower() == ".npy":
        return write_atomic(path, lambda fh: np.save(fh, mask))
    from PIL import Image

    top = int(mask.max()) if mask.size else 0
    arr = mask.astype(np.uint8 if top < 256 else np.uint16)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")  # the format the name asks for
    return write_atomic(path, lambda fh: Image.fromarray(arr).save(fh, format=fmt))


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """A display copy of any image: min-max scaled to uint8, 3 channels (for overlays and figures)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    finite = np.isfinite(img)
    lo, hi = (float(img[finite].min()), float(img[finite].max())) if finite.any() else (0.0, 1.0)
    out = (np.clip((np.nan_to_num(img, nan=lo) - lo) / max(hi - lo, 1e-8), 0, 1) * 255).round()
    return out.astype(np.uint8)
