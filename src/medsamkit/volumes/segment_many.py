"""`medsamkit segment-volume SPEC -o FOLDER`: every volume of a dataset segmented into FOLDER/<volume>.nii.gz.

Each volume is prompted from its own label (slice-wise, or propagated with ``propagate``) like the one-volume
form, and its label map is written as NIfTI on the volume's grid under the name evaluate-volume's
``--save-masks`` and ``--predictions`` use (``volumes.masks.mask_file_name``), so the folder can be scored
with ``evaluate-volume --predictions FOLDER``. The run is resumable through the one results store: a
volume's per-class rows (voxels, slices, Dice against the prompting label) are appended after its file is
written, then it is marked done; a rerun skips done volumes and refuses a folder of another configuration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medsamkit.core.atomic import write_json_atomic, write_text_atomic
from medsamkit.core.batch import Executor, Task, run_batch
from medsamkit.core.errors import InputError
from medsamkit.core.results import RunStore
from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.embedding.resources import Resources
from medsamkit.io.datasets import VolumeCase
from medsamkit.models.loading import run_identity
from medsamkit.predictor import Predictor
from medsamkit.volumes.config import local_volume_resources, volume_kind
from medsamkit.volumes.masks import mask_file_name, write_label_map
from medsamkit.volumes.segment import class_summary, one_mode, parse_class_list, segment_volume
from medsamkit.volumes.slices import SliceEmbedder

SEGMENT_FIELDS = ["volume", "file", "class", "voxels", "slices", "dice", "encoded_slices", "seconds"]
# settings whose change makes the label maps already in the folder those of another run
SEGMENT_KEYS = ("data", "prompts", "propagate", "three_slice", "window", "classes", "min_area", "margin", "min_iou",
                "seed", "model", "model_sha256", "checkpoint")
Model = Callable[[], tuple[Predictor, EmbeddingCache | None]]


@dataclass
class SegmentDatasetConfig:
    """Inputs of `medsamkit segment-volume SPEC -o FOLDER` (many volumes, labels from the SPEC)."""

    data: str
    out: str
    prompts: str = "box"
    propagate: bool = False
    three_slice: bool = False
    window: str | None = None
    classes: str | None = None  # label values to segment (comma list); None: all
    min_area: int = 20
    margin: float = 0.0
    min_iou: float = 0.0
    seed: int = 0
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    cache: str | None = None  # embedding cache folder (medsamkit.embedding.cache)
    max_images: int | None = None  # at most N volumes
    show_progress: bool = True


def open_segment_run(cfg: SegmentDatasetConfig) -> RunStore:
    """The output folder's store (refuses a folder of another configuration before anything runs)."""
    one_mode(cfg.prompts)  # a bad --prompts fails before the model loads
    return RunStore(cfg.out, run_identity(cfg), {"per_class": SEGMENT_FIELDS}, keys=SEGMENT_KEYS,
                    case_field="volume")


def segment_case(cfg: SegmentDatasetConfig, case: VolumeCase, model: Model) -> list[dict]:
    """Segment one volume, write OUT/<volume>.nii.gz on its grid; its per-class rows."""
    if not isinstance(case, VolumeCase):
        raise InputError(f"{cfg.data}: segment-volume needs volumes; use `segment` for 2D images")
    if "volume" not in case.meta:
        raise InputError(f"{cfg.data}: volume {case.name} has no grid to write its label map on")
    classes = parse_class_list(cfg.classes)
    predictor, cache = model()
    embedder = SliceEmbedder(predictor, case.image, cfg.three_slice, case.name, cache=cache)
    start = time.perf_counter()
    pred = segment_volume(embedder, case.image, case.label, None, one_mode(cfg.prompts), cfg.propagate,
                          cfg.three_slice, classes, cfg.min_area, cfg.margin, cfg.seed, case.name, cfg.min_iou)
    seconds = round(time.perf_counter() - start, 2)
    name = mask_file_name(case.name)
    write_label_map(pred, Path(cfg.out) / name, like=case.meta["volume"])
    embedder.close()
    return [{"volume": case.name, "file": name, "class": int(v), **entry, "dice": entry.get("dice", ""),
             "encoded_slices": len(embedder.encoded), "seconds": seconds}
            for v, entry in class_summary(pred, case.label, classes).items()]


def finish_segment_run(cfg: SegmentDatasetConfig, store: RunStore, interrupted: bool, n_new: int) -> dict:
    """summary.json / summary.md of the folder (mean Dice per class over the finished volumes)."""
    rows = store.rows("per_class")
    per_class: dict[str, list[float]] = {}
    for r in rows:
        if r["dice"] != "":
            per_class.setdefault(r["class"], []).append(float(r["dice"]))
    dice = {c: round(float(np.mean(v)), 4) for c, v in sorted(per_class.items())}
    summary = {"config": asdict(cfg), "volumes": len(store.done), "new_volumes": n_new, "interrupted": interrupted,
               "mean_dice": dice, "out": str(cfg.out)}
    write_json_atomic(Path(cfg.out) / "summary.json", summary)
    lines = [f"# Volume segmentation: {cfg.data}", "", f"{len(store.done)} volumes, label maps in {cfg.out}", "",
             "| class | volumes | mean Dice vs the prompting label |", "|---|---|---|"]
    lines += [f"| {c} | {len(per_class[c])} | {d:.4f} |" for c, d in dice.items()]
    write_text_atomic(Path(cfg.out) / "summary.md", "\n".join(lines) + "\n")
    return summary


def segment_volume_item(res: Resources, cfg: SegmentDatasetConfig, index: int, done: frozenset[str]) -> Iterator[dict]:
    """Task: segment volume ``index`` into OUT/<volume>.nii.gz; its per-class rows (None: done before)."""
    case = res.item(cfg.data, cfg.window, volume_kind(cfg.data), index)
    if getattr(case, "name", None) in done:
        yield {"name": case.name, "rows": None}
        return

    def model() -> tuple[Predictor, EmbeddingCache | None]:
        predictor = res.predictor(cfg.model, cfg.checkpoint, cfg.device)
        return predictor, res.cache(cfg.cache, predictor)

    yield {"name": case.name, "rows": segment_case(cfg, case, model)}


class SegmentDatasetRun:
    """A `segment-volume SPEC -o FOLDER` folder as a batch job (``core.batch.BatchJob``)."""

    desc, unit = "volumes", "volume"

    def __init__(self, cfg: SegmentDatasetConfig, predictor: Predictor | None = None) -> None:
        self.cfg, self.show_progress = cfg, cfg.show_progress
        self.store = open_segment_run(cfg)  # refuses a folder of another configuration before anything runs
        self.resources, self.n_volumes = local_volume_resources(cfg.data, cfg.window, cfg.max_images, predictor)
        self.n_new = 0

    def tasks(self, slots: int | None) -> list[Task]:  # noqa: D102
        done = frozenset(self.store.done)
        return [Task(segment_volume_item, (self.cfg, i, done)) for i in range(self.n_volumes)]

    def take(self, result: dict) -> None:  # noqa: D102
        if result["rows"] is not None and not self.store.is_done(result["name"]):
            self.store.add_case(result["name"], {"per_class": result["rows"]})
            self.n_new += 1

    def finish(self, interrupted: bool) -> dict:  # noqa: D102
        return finish_segment_run(self.cfg, self.store, interrupted, self.n_new)

    def has_results(self) -> bool:  # noqa: D102
        return bool(self.store.done)


def segment_volumes(cfg: SegmentDatasetConfig, predictor: Predictor | None = None,
                    executor: Executor | None = None) -> dict:
    """Segment every volume of ``cfg.data`` into ``cfg.out`` (resumable; here, or with ``executor``, e.g. on
    Dask); the summary. On Ctrl-C the finished volumes stay, the summary is written and KeyboardInterrupt
    propagates; bad input stops a local run."""
    return run_batch(SegmentDatasetRun(cfg, predictor), executor)
