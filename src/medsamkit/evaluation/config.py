"""What `medsamkit evaluate` is asked to do (the CLI fills this in) and what identifies a run."""

from __future__ import annotations

from dataclasses import dataclass

from medsamkit.core.tiling import WHOLE_VIEW_MIN_SIDE

OBJECT_FIELDS = [
    "image", "object", "area", "method", "mode", "step", "n_points", "dice", "iou", "predicted_iou",
    "seconds", "final", "tile", "prompt", "clicks",
]
IMAGE_FIELDS = ["image", "objects", "skipped_small", "tiles", "embed_seconds", "decode_seconds", "baseline_seconds"]
TABLES = {"per_object": OBJECT_FIELDS, "per_image": IMAGE_FIELDS}
# fields whose change makes earlier results in the same folder incomparable
RESULT_KEYS = ("data", "prompts", "model", "model_sha256", "checkpoint", "seed", "min_area", "min_fraction",
               "tile_size", "tile_overlap", "multimask", "baseline", "window", "classes", "view_min_side",
               "clicks", "click_ranker_sha256",  # a ranking is known by its content, wherever the file lies
               "box_output")  # a folder from before box_output had the single output


@dataclass
class EvaluateConfig:
    """Everything `medsamkit evaluate` needs; the CLI only fills this in."""

    data: str
    out: str
    prompts: str = "box,box+5,center,random3,iter5"
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    max_images: int | None = None
    max_objects: int | None = None  # per image, chosen with the seed (for quick looks at huge images)
    seed: int = 0
    min_area: int = 20
    min_fraction: float = 0.0
    tile_size: int | None = None  # None: auto (per-object view, core.tiling), 0: never tile
    view_min_side: float = WHOLE_VIEW_MIN_SIDE  # auto: objects smaller at model scale get native tiles
    tile_overlap: int = 64
    multimask: bool = False
    clicks: str = "auto"  # click strategy (prompts.clicks): auto, native or search
    click_ranker: str | None = None  # the search's ranking from `medsamkit fit-clicks` (its ranking.json)
    box_output: str = "single"  # which output answers a box alone: single, or fit (prompts.boxes)
    baseline: bool = True
    save_masks: bool = False
    figures: bool = True
    batch_size: int = 32
    cache: str | None = None  # embedding cache folder (medsamkit.embedding)
    window: str | None = None  # CT/MR intensity window for volume SPECs (name or lo,hi)
    classes: str | None = None  # label values to evaluate (comma list); None: all
    show_progress: bool = True
