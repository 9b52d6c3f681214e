"""`medsamkit evaluate-volume`: variants of prompting scored per volume and per slice, resumable.

Results go through the one results store (``medsamkit.core.results.RunStore``): per_slice.csv and
per_volume.csv, a volume marked done once all its rows are written; rows of an interrupted volume are
dropped when the folder is reopened. Variants are keyed by name, so a rerun with more prompt modes adds
only the missing variants of finished volumes. A finished run loads no model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from medsamkit.core.atomic import write_json_atomic, write_text_atomic
from medsamkit.core.errors import InputError
from medsamkit.core.results import RunStore
from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.io.datasets import Dataset, VolumeCase
from medsamkit.io.windowing import parse_window
from medsamkit.models.loading import run_identity
from medsamkit.predictor import Predictor
from medsamkit.volumes.masks import mask_file_name, read_prediction, variant_folder, write_label_map
from medsamkit.volumes.scores import (
    SLICE_FIELDS,
    present_classes,
    score_case,
    summarise,
    summary_markdown,
    volume_fields,
)
from medsamkit.volumes.segment import parse_class_list, segment_volume
from medsamkit.volumes.slices import SliceEmbedder
from medsamkit.volumes.variants import Variant, variants


@dataclass
class EvaluateVolumeConfig:
    """Everything `medsamkit evaluate-volume` needs; the CLI only fills this in."""

    data: str
    out: str
    prompts: str = "box"
    propagate: bool | list[bool] = False
    three_slice: bool | list[bool] = False
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    window: str | None = None
    max_images: int | None = None  # at most N volumes
    classes: str | None = None  # label values to evaluate (comma list); None: all
    seed: int = 0
    min_area: int = 20
    margin: float = 0.0
    min_iou: float = 0.0
    tolerances_mm: tuple[float, ...] = (1.0, 2.0)
    save_masks: bool = False
    predictions: str | None = None  # score these NIfTI masks instead of running a model
    cache: str | None = None  # embedding cache folder (medsamkit.embedding.cache)
    show_progress: bool = True


# settings whose change makes earlier rows in the same folder incomparable (variants are keyed by name)
VOLUME_RESULT_KEYS = ("data", "model", "model_sha256", "checkpoint", "window", "classes", "seed", "min_area",
                      "margin", "min_iou", "tolerances_mm", "predictions")


def open_volume_dataset(spec: str, window: str | tuple[float, float] | None = None) -> Dataset:
    """A dataset of volumes for a SPEC (builtin:lung-gtv, IMAGE::LABEL, nnU-Net folder, DICOM folder)."""
    from medsamkit.io.datasets import open_dataset

    return open_dataset(spec, "class" if not str(spec).startswith("builtin:") else None, window)


def evaluate_case(predictor: Predictor, case: VolumeCase, runs: list[Variant], seed: int = 0,
                  min_area: int = 20, margin: float = 0.0, tolerances_mm: Sequence[float] = (1.0, 2.0),
                  cache: EmbeddingCache | None = None, classes: Sequence[int] | None = None,
                  ) -> tuple[list[dict], list[dict], dict]:
    """Run every variant on one volume: (per-volume rows, per-slice rows, {variant name: label volume}).

    ``cache``: the embedding cache slices are read from and saved to; ``classes``: the label values to run.
    """
    volume_rows, per_slice, preds = [], [], {}
    embedders: dict[bool, SliceEmbedder] = {}
    for run in runs:
        embedder = embedders.get(run.three_slice)
        if embedder is None:
            embedder = embedders[run.three_slice] = SliceEmbedder(predictor, case.image, run.three_slice,
                                                                  case.name, cache=cache)
        before, start = len(embedder.encoded), time.perf_counter()
        pred = segment_volume(embedder, case.image, case.label, prompts=run.mode, propagate=run.propagate,
                              three_slice=run.three_slice, classes=classes, min_area=min_area, margin=margin,
                              seed=seed, source=case.name, min_iou=run.min_iou)
        seconds = time.perf_counter() - start
        preds[run.name] = pred
        rows, slices = score_case(case, pred, tolerances_mm, run.name, classes)
        for row in rows:
            row.update(mode=run.mode.name, strategy="propagate" if run.propagate else "slicewise",
                       three_slice=int(run.three_slice), embedded_slices=len(embedder.encoded) - before,
                       seconds=round(seconds, 2))
        volume_rows.extend(rows)
        per_slice.extend(slices)
    return volume_rows, per_slice, preds


def _fmt(value):
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    return value


def _formatted(rows: list[dict]) -> list[dict]:
    return [{k: _fmt(v) for k, v in row.items()} for row in rows]


class VolumeRun:
    """One evaluate-volume folder: the store, which variants each volume still needs, the lazily loaded model."""

    def __init__(self, cfg: EvaluateVolumeConfig, predictor: Predictor | None = None) -> None:
        self.cfg = cfg
        self.runs = [] if cfg.predictions else variants(cfg.prompts, cfg.propagate, cfg.three_slice, cfg.min_iou)
        self.run_names = ["predictions"] if cfg.predictions else [v.name for v in self.runs]
        self.classes = parse_class_list(cfg.classes)
        self.store = RunStore(cfg.out, run_identity(cfg), {"per_slice": SLICE_FIELDS,
                                                           "per_volume": volume_fields(cfg.tolerances_mm)},
                              keys=VOLUME_RESULT_KEYS, case_field="volume")
        self.finished = {(r["volume"], r["variant"]) for r in self.store.rows("per_volume")}
        # Slice rows of a variant whose volume rows never came (interrupted between the two appends while a
        # finished volume got a new variant) would be duplicated by the rerun.
        if any((r["volume"], r["variant"]) not in self.finished for r in self.store.rows("per_slice")):
            self.store.keep_rows("per_slice", lambda r: (r["volume"], r["variant"]) in self.finished)
        self._predictor = predictor
        self.cache: EmbeddingCache | None = None

    def predictor(self) -> Predictor:
        """The model (loaded on first need) and, with ``cfg.cache``, its embedding cache."""
        if self._predictor is None:
            from medsamkit.core.runtime import select_device
            from medsamkit.models import load_model

            cfg = self.cfg
            self._predictor = Predictor(load_model(cfg.model, cfg.checkpoint, select_device(cfg.device)))
        if self.cfg.cache and self.cache is None:
            self.cache = EmbeddingCache(self.cfg.cache, self._predictor.model)
        return self._predictor

    def todo(self, case: VolumeCase) -> list[Variant] | None:
        """The variants ``case`` still needs ([] for predictions to score), None when it is finished."""
        if self.store.is_done(case.name) and all((case.name, n) in self.finished for n in self.run_names):
            return None
        return [r for r in self.runs if (case.name, r.name) not in self.finished]

    def run(self, case: VolumeCase, n_volumes: int) -> bool:
        """Evaluate one volume (the variants it still needs) and record it; False when nothing was left."""
        todo = self.todo(case)
        if todo is None:
            return False
        rows = compute_volume(self.cfg, case, todo, n_volumes, lambda: (self.predictor(), self.cache), self.classes)
        return self.record(case.name, rows)

    def record(self, name: str, rows: dict) -> bool:
        """Append one volume's rows (from ``compute_volume``, here or on a worker); False when it had none."""
        if not rows:
            if not self.store.is_done(name):
                self.store.add_case(name, {})  # nothing to evaluate: done without rows
            return False
        # slice rows first: volume rows are what marks a variant finished
        self.store.add_case(name, {"per_slice": rows["per_slice"], "per_volume": rows["per_volume"]})
        self.finished |= {(r["volume"], r["variant"]) for r in rows["per_volume"]}
        return True

    def finish(self, interrupted: bool, n_new: int) -> dict:
        """summary.json / summary.md of every row the folder holds for this run's variants."""
        cfg, out = self.cfg, Path(self.cfg.out)
        rows = [r for r in self.store.rows("per_volume") if r["variant"] in self.run_names]
        summary = {"config": asdict(cfg), "volumes": len({r["volume"] for r in rows}),
                   "results": summarise(rows, cfg.tolerances_mm), "interrupted": interrupted, "new_volumes": n_new}
        if self.cache is not None:
            summary["cache"] = dict(self.cache.stats)
        write_json_atomic(out / "summary.json", summary)
        write_text_atomic(out / "summary.md", summary_markdown(summary["results"], f"Volume evaluation: {cfg.data}"))
        return summary


def compute_volume(cfg: EvaluateVolumeConfig, case: VolumeCase, todo: list[Variant], n_volumes: int,
                   model: Callable[[], tuple[Predictor, EmbeddingCache | None]], classes: list[int] | None) -> dict:
    """The rows of one volume for the variants ``todo`` (masks saved with --save-masks); {} when none of the
    chosen classes is present. ``model()`` gives the predictor and embedding cache (loaded on first need)."""
    if not present_classes(case.label, classes):
        return {}
    if cfg.predictions:
        pred = read_prediction(cfg.predictions, case, n_volumes, cfg.data)
        volume_rows, per_slice = score_case(case, pred, cfg.tolerances_mm, classes=classes)
        preds: dict = {}
    else:
        predictor, cache = model()
        volume_rows, per_slice, preds = evaluate_case(predictor, case, todo, cfg.seed, cfg.min_area, cfg.margin,
                                                      cfg.tolerances_mm, cache, classes)
    if cfg.save_masks and "volume" in case.meta:
        for name, pred in preds.items():
            write_label_map(pred, variant_folder(cfg.out, name) / mask_file_name(case.name), like=case.meta["volume"])
    return {"per_slice": _formatted(per_slice), "per_volume": _formatted(volume_rows)}


def evaluate_volumes(cfg: EvaluateVolumeConfig, predictor: Predictor | None = None,
                     on_volume: Callable[[str], None] | None = None) -> dict:
    """Evaluate variants over a volume dataset; writes per_volume.csv, per_slice.csv, summary.json/.md.

    With ``cfg.predictions`` the given label maps are scored (variant ``predictions``) and no model runs.
    Resumable; on Ctrl-C the finished volumes stay on disk, the summary is written and KeyboardInterrupt
    propagates. ``on_volume(name)`` is called after each newly finished volume.
    """
    run = VolumeRun(cfg, predictor)  # refuses a folder of another configuration before loading anything
    dataset = open_volume_dataset(cfg.data, parse_window(cfg.window))
    loaders = dataset.head(cfg.max_images).loaders
    interrupted, n_new = False, 0
    bar = tqdm(loaders, desc="volumes", disable=not cfg.show_progress)
    try:
        for load in bar:
            case = load()
            if not isinstance(case, VolumeCase):
                raise InputError(f"{cfg.data}: evaluate-volume needs volumes; use `evaluate` for 2D images")
            if run.run(case, len(loaders)):
                n_new += 1
                if on_volume is not None:
                    on_volume(case.name)
    except KeyboardInterrupt:
        interrupted = True
    except InputError:
        if run.store.done:  # a bad volume stops the run; what was finished is reported first
            run.finish(False, n_new)
        raise
    finally:
        bar.close()
    summary = run.finish(interrupted, n_new)
    if interrupted:
        raise KeyboardInterrupt
    return summary
