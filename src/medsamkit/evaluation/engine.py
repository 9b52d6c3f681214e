"""Zero-shot evaluation with simulated prompts (docs/protocols.md): the per-object rows of one image (the run,
resumable, with its summary and figures: ``evaluation.run``).

Each object is prompted in its view (``core.tiling``: the whole image resized to the model input unless the
object is too small there, then a native-resolution tile holding it with context; ``--tile N`` tiles every
object, ``--tile 0`` none). A tile contains its objects whole, so Dice on the tile equals Dice on the full
image. The random-walker baseline runs on a crop around each prompt (``evaluation.baseline``); the
neighbourhood of point prompts is 1/8 of the view's shorter side (at least 16 px). Every prompt mode
runs batched over the objects of a tile through the one click session (``medsamkit.prompts``); iterative
modes advance all objects of the tile one click per model call, feeding back each object's low-res logits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.core.objects import ImageObject, Window, extract_objects, parse_classes
from medsamkit.core.results import RunStore, key_differences
from medsamkit.core.seeds import name_key
from medsamkit.core.tiling import plan_tiles, tile_size_for
from medsamkit.evaluation.baseline import run_mode_baseline
from medsamkit.evaluation.config import RESULT_KEYS, TABLES, EvaluateConfig
from medsamkit.io.datasets import Case, Dataset, open_dataset
from medsamkit.metrics import dice, iou
from medsamkit.models.loading import run_identity
from medsamkit.predictor import Predictor
from medsamkit.prompts import PromptMode
from medsamkit.prompts.clicks import resolve_strategy
from medsamkit.prompts.objects import ObjectRun, run_mode_model
from medsamkit.prompts.search_settings import ranking_identity, search_settings


def open_store(cfg: EvaluateConfig) -> RunStore:
    """The run folder of an evaluation (refuses one that holds another configuration)."""
    search_settings(cfg.click_ranker)  # a bad ranking file is refused before any image is run
    return RunStore(cfg.out, {**run_identity(cfg), **ranking_identity(cfg.click_ranker)}, TABLES, keys=RESULT_KEYS,
                    differences=key_differences(RESULT_KEYS, {"box_output": EvaluateConfig.box_output}), case_field="image")


def _rows(case: Case, window: Window, mode: PromptMode, method: str, runs: list[ObjectRun],
          clicks: str) -> list[dict]:
    rows = []
    for run in runs:
        truth = run.obj.mask_in(window)
        for k, step in enumerate(run.steps):
            q, p = step.predicted_iou, step.prompt
            rows.append({
                "image": case.name, "object": run.obj.label, "area": run.obj.area, "method": method,
                "mode": mode.name, "step": k + 1, "n_points": len(p.points),
                "dice": round(dice(step.mask, truth), 6), "iou": round(iou(step.mask, truth), 6),
                "predicted_iou": "" if np.isnan(q) else round(q, 5), "seconds": round(step.seconds, 5),
                "final": int(k == len(run.steps) - 1), "tile": ":".join(str(int(v)) for v in window),
                "prompt": json.dumps(p.as_dict(), separators=(",", ":")) if k == len(run.steps) - 1 else "",
                "clicks": clicks if mode.n_points else "",
            })
    return rows


def _select_objects(objects: list[ImageObject], limit: int | None, seed: int, key: int) -> list[ImageObject]:
    if limit is None or len(objects) <= limit:
        return objects
    idx = np.sort(np.random.default_rng([seed, key]).choice(len(objects), limit, replace=False))
    return [objects[i] for i in idx]


def _embed(predictor: Predictor, tile_img: np.ndarray, source: str, cache) -> float:
    t0 = time.perf_counter()
    if cache is not None:
        predictor.set_embedding(cache.get_or_compute(predictor, tile_img), source, tile_img)
    else:
        predictor.set_image(tile_img, source)
    return time.perf_counter() - t0


def case_objects(case: Case, cfg: EvaluateConfig) -> tuple[list[ImageObject], int]:
    """The objects of a case that the run prompts (size thresholds, --classes, --max-objects) and the
    number skipped as too small."""
    objs = extract_objects(case.label, case.kind, cfg.min_area, cfg.min_fraction)
    chosen = list(objs)
    classes = parse_classes(cfg.classes)
    if classes is not None:
        chosen = [o for o in chosen if o.label in classes]
    return _select_objects(chosen, cfg.max_objects, cfg.seed, name_key(case.name)), objs.skipped_small


def evaluate_case(case: Case, predictor: Predictor, modes: list[PromptMode], cfg: EvaluateConfig,
                  cache=None, part: tuple[int, int] = (0, 1)) -> tuple[dict, list[dict], dict[str, np.ndarray]]:
    """All modes on one image: (per-image row, per-object rows, final label maps per mode if saving).

    ``part`` (k, n): only every n-th tile of the image's plan from the k-th (the tiles of one image spread
    over tasks; the rows of the n parts together are the image's rows, the per-image row counts the whole)."""
    chosen, skipped = case_objects(case, cfg)
    key = name_key(case.name)
    shape = case.label.shape[:2]
    tile = tile_size_for(shape, cfg.tile_size, predictor.model.preprocessing.input_size, cfg.view_min_side)
    plan = plan_tiles(chosen, shape, tile, cfg.tile_overlap) if chosen else {}
    rows: list[dict] = []
    keep_masks = cfg.save_masks or cfg.figures
    search = search_settings(cfg.click_ranker)
    saved = {m.name: np.zeros(shape, np.uint16) for m in modes} if keep_masks else {}
    embed_s = decode_s = base_s = 0.0
    for t, (window, tile_objs) in enumerate(plan.items()):
        if t % part[1] != part[0]:
            continue
        y0, x0, y1, x1 = window
        tile_img = case.image[y0:y1, x0:x1]
        embed_s += _embed(predictor, tile_img, f"{case.name}[{y0}:{y1},{x0}:{x1}]", cache)
        for mode in modes:
            runs = run_mode_model(predictor, tile_objs, window, mode, cfg.seed, key, cfg.multimask, cfg.clicks,
                                  search, cfg.box_output)
            decode_s += sum(sum(r.seconds) for r in runs)
            rows += _rows(case, window, mode, "model", runs, resolve_strategy(predictor.model, cfg.clicks))
            for r in runs if keep_masks else ():
                saved[mode.name][y0:y1, x0:x1][r.masks[-1]] = r.obj.label
            if cfg.baseline:
                margin = max(16, min(y1 - y0, x1 - x0) // 8)
                bruns = run_mode_baseline(tile_img, tile_objs, window, mode, cfg.seed, key, margin)
                base_s += sum(sum(r.seconds) for r in bruns)
                rows += _rows(case, window, mode, "random_walker", bruns, "")
    image_row = {"image": case.name, "objects": len(chosen), "skipped_small": skipped,
                 "tiles": len(plan), "embed_seconds": round(embed_s, 4), "decode_seconds": round(decode_s, 4),
                 "baseline_seconds": round(base_s, 4)}
    return image_row, rows, saved


def iter_dataset(cfg: EvaluateConfig) -> Dataset:
    """The dataset of a run, cut to --max-images images/volumes (InputError when empty)."""
    ds = open_dataset(cfg.data, window=cfg.window)
    if len(ds) == 0:
        raise InputError(f"{cfg.data}: empty dataset")
    return ds.head(cfg.max_images)


def mask_path(out: Path, mode_name: str, case_name: str) -> Path:
    """Where the final label map of one mode on one case is written (``--save-masks`` and figures)."""
    return out / "masks" / mode_name / f"{case_name.replace('/', '__')}.png"
