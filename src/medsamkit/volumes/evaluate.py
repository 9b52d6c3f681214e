"""`medsamkit evaluate-volume`: variants of prompting scored per volume and per slice, resumable.

Results go through the one results store (``medsamkit.core.results.RunStore``): per_slice.csv and
per_volume.csv, a volume marked done once all its rows are written; rows of an interrupted volume are
dropped when the folder is reopened. Variants are keyed by name, so a rerun with more prompt modes adds
only the missing variants of finished volumes. A finished run loads no model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from medsamkit.core.atomic import write_json_atomic, write_text_atomic
from medsamkit.core.batch import Executor, Task, run_batch
from medsamkit.core.errors import InputError
from medsamkit.core.results import RunStore
from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.embedding.resources import Resources
from medsamkit.io.datasets import VolumeCase
from medsamkit.models.loading import run_identity
from medsamkit.predictor import Predictor
from medsamkit.volumes.config import (
    VOLUME_RESULT_KEYS,
    EvaluateVolumeConfig,
    local_volume_resources,
    volume_kind,
)
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


def evaluate_volume_item(res: Resources, cfg: EvaluateVolumeConfig, index: int, n_volumes: int,
                         finished: frozenset[tuple[str, str]], done: frozenset[str]) -> Iterator[dict]:
    """Task: the rows of volume ``index`` for the variants it still needs (``rows`` None: nothing left)."""
    case = res.item(cfg.data, cfg.window, volume_kind(cfg.data), index)
    if not isinstance(case, VolumeCase):
        raise InputError(f"{cfg.data}: evaluate-volume needs volumes; use `evaluate` for 2D images")
    runs = [] if cfg.predictions else variants(cfg.prompts, cfg.propagate, cfg.three_slice, cfg.min_iou)
    names = ["predictions"] if cfg.predictions else [v.name for v in runs]
    if case.name in done and all((case.name, n) in finished for n in names):
        yield {"name": case.name, "rows": None}
        return

    def model() -> tuple[Predictor, EmbeddingCache | None]:
        predictor = res.predictor(cfg.model, cfg.checkpoint, cfg.device)
        return predictor, res.cache(cfg.cache, predictor)

    todo = [r for r in runs if (case.name, r.name) not in finished]
    yield {"name": case.name, "rows": compute_volume(cfg, case, todo, n_volumes, model, parse_class_list(cfg.classes))}


class VolumeRun:
    """One evaluate-volume folder as a batch job (``core.batch.BatchJob``): the store, which variants each volume
    still needs, the model loaded on first need."""

    desc, unit = "volumes", "volume"

    def __init__(self, cfg: EvaluateVolumeConfig, predictor: Predictor | None = None,
                 on_volume: Callable[[str], None] | None = None) -> None:
        self.cfg, self.on_volume = cfg, on_volume
        self.show_progress = cfg.show_progress
        self.run_names = ["predictions"] if cfg.predictions else [
            v.name for v in variants(cfg.prompts, cfg.propagate, cfg.three_slice, cfg.min_iou)]
        self.store = RunStore(cfg.out, run_identity(cfg), {"per_slice": SLICE_FIELDS,
                                                           "per_volume": volume_fields(cfg.tolerances_mm)},
                              keys=VOLUME_RESULT_KEYS, case_field="volume")
        self.finished = {(r["volume"], r["variant"]) for r in self.store.rows("per_volume")}
        # Slice rows of a variant whose volume rows never came (interrupted between the two appends while a
        # finished volume got a new variant) would be duplicated by the rerun.
        if any((r["volume"], r["variant"]) not in self.finished for r in self.store.rows("per_slice")):
            self.store.keep_rows("per_slice", lambda r: (r["volume"], r["variant"]) in self.finished)
        self.resources, self.n_volumes = local_volume_resources(cfg.data, cfg.window, cfg.max_images, predictor)
        self.n_new = 0

    def tasks(self, slots: int | None) -> list[Task]:  # noqa: D102
        finished, done = frozenset(self.finished), frozenset(self.store.done)
        return [Task(evaluate_volume_item, (self.cfg, i, self.n_volumes, finished, done))
                for i in range(self.n_volumes)]

    def take(self, result: dict) -> None:  # noqa: D102
        if result["rows"] is not None and self.record(result["name"], result["rows"]):
            self.n_new += 1
            if self.on_volume is not None:
                self.on_volume(result["name"])

    def has_results(self) -> bool:  # noqa: D102
        return bool(self.store.done)

    def record(self, name: str, rows: dict) -> bool:
        """Append one volume's rows (from ``compute_volume``); False when it had none."""
        if not rows:
            if not self.store.is_done(name):
                self.store.add_case(name, {})  # nothing to evaluate: done without rows
            return False
        # slice rows first: volume rows are what marks a variant finished
        self.store.add_case(name, {"per_slice": rows["per_slice"], "per_volume": rows["per_volume"]})
        self.finished |= {(r["volume"], r["variant"]) for r in rows["per_volume"]}
        return True

    def finish(self, interrupted: bool) -> dict:
        """summary.json / summary.md of every row the folder holds for this run's variants."""
        cfg, out = self.cfg, Path(self.cfg.out)
        rows = [r for r in self.store.rows("per_volume") if r["variant"] in self.run_names]
        summary = {"config": asdict(cfg), "volumes": len({r["volume"] for r in rows}),
                   "results": summarise(rows, cfg.tolerances_mm), "interrupted": interrupted, "new_volumes": self.n_new}
        cache = self.resources.caches.get(cfg.cache) if cfg.cache else None
        if cache is not None:
            summary["cache"] = dict(cache.stats)
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
                     on_volume: Callable[[str], None] | None = None, executor: Executor | None = None) -> dict:
    """Evaluate variants over a volume dataset (or, with ``cfg.protocol``, run that interactive protocol:
    ``volumes.protocol``) (here, or with ``executor``, e.g. on Dask); writes per_volume.csv,
    per_slice.csv, summary.json/.md.

    With ``cfg.predictions`` the given label maps are scored (variant ``predictions``) and no model runs.
    Resumable; on Ctrl-C the finished volumes stay on disk, the summary is written and KeyboardInterrupt
    propagates. ``on_volume(name)`` is called after each newly finished volume.
    """
    if cfg.start != "box" and not cfg.protocol:
        raise InputError(f"--start {cfg.start} applies to --protocol cvpr25 only")
    if cfg.protocol:
        from medsamkit.volumes.protocol import ProtocolRun

        return run_batch(ProtocolRun(cfg, predictor, on_volume), executor)
    return run_batch(VolumeRun(cfg, predictor, on_volume), executor)
