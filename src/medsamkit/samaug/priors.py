"""SAMAug prior maps: segmentation and boundary priors from everything-mode masks, fused into the image.

Outputs of `compute_priors` (per image NAME, "/" in case names becomes "__"):
  masks/NAME.npz    packed mask bits + boxes, areas, predicted IoU, stability (see `save_masks`)
  priors/NAME.npz   seg (float32 H,W: sum of stability scores), boundary (uint8 H,W in {0,1})
  priors/NAME_seg.png       uint16 = round(seg * 1000) (milli-units, clipped at 65535)
  priors/NAME_boundary.png  uint16 = boundary * 65535
  visuals/NAME.png  image | seg prior | boundary prior | fused (the paper's Fig. 2 layout)
  config.json, images.csv, done.txt   the run store (medsamkit.core.results.RunStore): settings checked on
                    resume, one row per finished image, the finished images
  index.json        settings and one entry per finished image (a view of images.csv)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medsamkit.core.atomic import save_npz_atomic, write_atomic, write_json_atomic
from medsamkit.core.batch import Executor, Task, run_batch
from medsamkit.core.errors import InputError
from medsamkit.core.results import RunStore
from medsamkit.embedding.resources import LocalResources, Resources
from medsamkit.io.datasets import VolumeCase, open_dataset
from medsamkit.predictor import Predictor
from medsamkit.samaug.everything import EverythingConfig, MaskRecord, generate_masks
from medsamkit.samaug.fusion import NORMALISATIONS, fuse, unit_image  # noqa: F401  (unit_image: re-exported)

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


# --- files -----------------------------------------------------------------------------------------------
def save_masks(path: Path, records: list[MaskRecord], shape: tuple[int, int]) -> Path:
    """Write records as one npz: `bits` (all crops' pixels row-major, packed), `boxes` (N,4) int32 inclusive,
    `area`, `predicted_iou`, `stability_score` (N,) and `shape` (H, W)."""
    flat = np.concatenate([r.crop.ravel() for r in records]) if records else np.zeros(0, dtype=bool)
    save_npz_atomic(  # a half-written file never looks finished to a resumed run
        path,
        bits=np.packbits(flat),
        nbits=np.int64(flat.size),
        boxes=np.array([r.box for r in records], dtype=np.int32).reshape(-1, 4),
        area=np.array([r.area for r in records], dtype=np.int64),
        predicted_iou=np.array([r.predicted_iou for r in records], dtype=np.float32),
        stability_score=np.array([r.stability_score for r in records], dtype=np.float32),
        shape=np.array(shape[:2], dtype=np.int64),
    )
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


def write_png(path: Path, array: np.ndarray) -> Path:
    """``array`` (uint8/uint16, grey or RGB) as a PNG, written atomically (a resumed run never sees half of one)."""
    from PIL import Image

    return write_atomic(path, lambda fh: Image.fromarray(array).save(fh, format="PNG"))


def _save_priors(folder: Path, name: str, seg: np.ndarray, boundary: np.ndarray) -> None:
    seg16 = np.clip(np.round(seg * SEG_PNG_SCALE), 0, 65535).astype(np.uint16)
    write_png(folder / f"{name}_seg.png", seg16)
    write_png(folder / f"{name}_boundary.png", boundary.astype(np.uint16) * np.uint16(65535))
    save_npz_atomic(folder / f"{name}.npz", seg=seg.astype(np.float32), boundary=boundary.astype(np.uint8))


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
IMAGES = "images"  # the run's case table: RUN/images.csv, one row per finished image
IMAGE_FIELDS = ["name", "masks", "seg_prior_max", "boundary_fraction", "seconds"]
MASK_KEYS = ("data", "window", "model", "checkpoint", "model_sha256")  # what the saved masks depend on
PRIOR_KEYS = ("boundary_thickness", "normalisation")  # what the priors and visuals add


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
    window: str | None = None  # CT/MR intensity window for volume SPECs (name or lo,hi)
    write_priors: bool = True  # False: masks only (`samaug masks`)
    boundary_thickness: int = 2
    normalisation: str = "clip"  # for the fused image in visuals/ (the U-Net engine fuses on the fly)
    progress: bool = True


def priors_identity(cfg: PriorsConfig) -> dict:
    """The settings a run folder records in config.json. A masks-only run leaves out the prior settings, so
    `samaug masks` then `samaug priors` (or the reverse) on one folder keeps the priors' settings on record."""
    from medsamkit.models.loading import model_fingerprint

    identity = {k: v for k, v in asdict(cfg).items() if k not in ("progress", "out")}
    if not cfg.write_priors:
        for key in ("write_priors", *PRIOR_KEYS):
            identity.pop(key)
    return {**identity, "model_sha256": model_fingerprint(cfg.model)}


# Everything-mode settings that a proposal mode never reads (a box run is the same run whatever the point grid).
UNREAD = {"blobs": {"points_per_side", "point_window_tokens", "grid_box_sizes", "grid_stride"},
          "grid": {"points_per_side", "point_window_tokens", "blob_min_distance", "blob_pads"},
          "points": {"grid_box_sizes", "grid_stride", "blob_min_distance", "blob_pads", "window_tokens"}}


def identity_differences(old: dict, new: dict) -> list[str]:
    """Settings whose change makes a folder's files another run's: the masks' settings always (but not those
    the run's proposal mode never reads), the priors' settings when both runs write priors (max_images and
    device never: more images is a plain resume)."""
    diff = [k for k in MASK_KEYS if old.get(k) != new.get(k)]
    before, now = old.get("everything") or {}, new.get("everything") or {}
    mode = before.get("proposal")
    unread = UNREAD.get(mode, set()) if mode == now.get("proposal") else set()
    diff += [f"everything.{k}" for k in sorted(set(before) | set(now))
             if k not in unread and before.get(k) != now.get(k)]
    if old.get("write_priors") and new.get("write_priors"):
        diff += [k for k in PRIOR_KEYS if old.get(k) != new.get(k)]
    return diff


def open_run(cfg: PriorsConfig) -> RunStore:
    """The output folder of `cfg` (refuses one made with other settings, in the one-line RunStore words)."""
    return RunStore(cfg.out, priors_identity(cfg), {IMAGES: IMAGE_FIELDS}, differences=identity_differences,
                    case_field="name")


def _outputs(out: Path, name: str, cfg: PriorsConfig) -> list[Path]:
    paths = [out / "masks" / f"{name}.npz"]
    if cfg.write_priors:
        paths += [out / "priors" / f"{name}.npz", out / "visuals" / f"{name}.png"]
    return paths


def outputs_finished(out: Path, name: str, cfg: PriorsConfig) -> bool:
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


def image_outputs(cfg: PriorsConfig, out: Path, name: str, image: np.ndarray, predictor: Callable[[], Predictor]) -> dict:
    """Masks (reused when a valid file exists), priors and visual of one image; its table row. ``predictor()``
    gives the model, asked for only when masks are computed (a folder of finished images loads none)."""
    start = time.perf_counter()
    shape = image.shape[:2]
    records = _saved_masks(out / "masks" / f"{name}.npz", shape)  # e.g. from an earlier `samaug masks`
    if records is None:
        records = generate_masks(predictor(), image, cfg.everything)
        save_masks(out / "masks" / f"{name}.npz", records, shape)
    row = {"name": name, "masks": len(records)}
    if cfg.write_priors:
        seg = segmentation_prior(records, shape)
        bnd = boundary_prior(records, shape, cfg.boundary_thickness)
        _save_priors(out / "priors", name, seg, bnd)
        fused = fuse(image, seg, bnd, cfg.normalisation)
        write_png(out / "visuals" / f"{name}.png", visual_panel(image, seg, bnd, fused))
        row["seg_prior_max"] = round(float(seg.max()), 4)
        row["boundary_fraction"] = round(float(bnd.mean()), 4)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _entry(row: dict[str, str], skipped: bool) -> dict:
    """An index.json entry from a table row (numbers back from their CSV text)."""
    entry: dict = {"name": row["name"], "masks": int(row["masks"]), "skipped": skipped}
    for key in ("seg_prior_max", "boundary_fraction", "seconds"):
        if row.get(key) not in (None, ""):
            entry[key] = float(row[key])
    return entry


def write_index(store: RunStore, cfg: PriorsConfig, skipped: set[str]) -> dict:
    """index.json: the settings and one entry per finished image (a view of the run's images table)."""
    entries = [_entry(r, r["name"] in skipped) for r in store.rows(IMAGES)]
    index = {"settings": asdict(cfg), "images": sorted(entries, key=lambda e: e["name"])}
    write_json_atomic(store.out / "index.json", index)
    return index


def record_image(store: RunStore, cfg: PriorsConfig, row: dict, skipped: set[str]) -> None:
    """One finished image into the run: its row (a redone image replaces its old one), done, the index."""
    store.keep_rows(IMAGES, lambda r: r["name"] != row["name"])
    store.add_case(row["name"], {IMAGES: [row]})
    write_index(store, cfg, skipped)


def priors_item(res: Resources, cfg: PriorsConfig, index: int, done: frozenset[str]) -> Iterator[dict]:
    """Task: masks (and priors) of every 2D case of dataset item ``index``; per case its row, or ``skipped``
    when the folder already holds its finished outputs."""
    item = res.item(cfg.data, cfg.window, None, index)
    out = Path(cfg.out)
    for case in item.slices() if isinstance(item, VolumeCase) else [item]:
        name = case.name.replace("/", "__")
        if name in done and outputs_finished(out, name, cfg):
            yield {"skipped": name}
            continue
        yield {"row": image_outputs(cfg, out, name, case.image,
                                    lambda: res.predictor(cfg.model, cfg.checkpoint, cfg.device))}


class PriorsJob:
    """A `samaug masks|priors` folder as a batch job (``core.batch.BatchJob``)."""

    desc, unit = "samaug", "case"

    def __init__(self, cfg: PriorsConfig, predictor: Predictor | None = None) -> None:
        if cfg.normalisation not in NORMALISATIONS:
            raise InputError(f"unknown normalisation {cfg.normalisation!r}; choose one of: {', '.join(NORMALISATIONS)}")
        self.cfg, self.show_progress = cfg, cfg.progress
        dataset = open_dataset(cfg.data, window=cfg.window).head(cfg.max_images)
        self.store = open_run(cfg)
        self.n_items = len(dataset)
        self.resources = LocalResources(predictor, {(cfg.data, cfg.window, None): dataset})
        self.skipped: set[str] = set()

    def tasks(self, slots: int | None) -> list[Task]:  # noqa: D102
        done = frozenset(self.store.done)
        return [Task(priors_item, (self.cfg, i, done)) for i in range(self.n_items)]

    def take(self, result: dict) -> None:  # noqa: D102
        if "skipped" in result:
            self.skipped.add(result["skipped"])
        else:
            record_image(self.store, self.cfg, result["row"], self.skipped)

    def finish(self, interrupted: bool) -> dict:  # noqa: D102
        return write_index(self.store, self.cfg, self.skipped)

    def has_results(self) -> bool:  # noqa: D102
        return bool(self.store.done)


def compute_priors(cfg: PriorsConfig, predictor: Predictor | None = None, executor: Executor | None = None) -> dict:
    """Everything-mode masks (and priors, visuals) for every image of `cfg.data` (here, or with ``executor``,
    e.g. on Dask); returns the index dict.

    Resumable: images marked done whose outputs exist and load are skipped (reported as "skipped" in the
    index); an image with a valid masks file but missing priors reuses the masks (`samaug masks` then
    `samaug priors`). A folder made with other settings is refused.
    """
    return run_batch(PriorsJob(cfg, predictor), executor)
