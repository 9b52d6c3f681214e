"""Zero-shot evaluation with simulated prompts (PROTOCOLS.md): per-object CSV, resumable, summary + figures.

Large images are cut into native-resolution tiles (a grid with overlap); each object is prompted inside a
tile that contains it whole, so its Dice on the tile equals its Dice on the full image. Every prompt mode
runs batched over the objects of a tile; iterative modes advance all objects of the tile one click per
model call, feeding each object's previous low-res logits back as its mask prompt.
"""

from __future__ import annotations

import csv
import json
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medsamkit.errors import InputError
from medsamkit.io.datasets import Case, open_dataset
from medsamkit.metrics import dice, iou
from medsamkit.objects import ImageObject, extract_objects
from medsamkit.predictor import Predictor
from medsamkit.prompts import (
    Prompt,
    PromptMode,
    initial_prompt,
    next_click,
    object_rng,
    parse_modes,
    stack_prompts,
)
from medsamkit.tiling import grid_windows, tile_for_object, tile_size_for

Window = tuple[int, int, int, int]
OBJECT_FIELDS = [
    "image", "object", "area", "method", "mode", "step", "n_points", "dice", "iou", "predicted_iou",
    "seconds", "final", "tile",
]
IMAGE_FIELDS = ["image", "objects", "skipped_small", "tiles", "embed_seconds", "decode_seconds", "baseline_seconds"]
# fields whose change makes earlier results in the same folder incomparable
RESULT_KEYS = ("data", "prompts", "model", "model_sha256", "checkpoint", "seed", "min_area", "min_fraction",
               "tile_size", "tile_overlap", "multimask", "baseline")


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
    tile_size: int | None = None  # None: auto (tile images larger than 2x the tile), 0: never
    tile_overlap: int = 64
    multimask: bool = False
    baseline: bool = True
    save_masks: bool = False
    figures: bool = True
    batch_size: int = 32
    cache: str | None = None  # embedding cache folder (engines.embed)
    show_progress: bool = True


@dataclass
class ObjectRun:
    """The outcome of one prompt mode on one object: one entry per model call."""

    obj: ImageObject
    prompts: list[Prompt] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)  # tile-sized bool
    pred_iou: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def _mode_key(mode: PromptMode) -> int:
    return zlib.crc32(mode.name.encode()) & 0x7FFFFFFF


def _case_key(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def plan_tiles(objects: list[ImageObject], shape: tuple[int, int], tile: int, overlap: int,
               margin: int = 8) -> dict[Window, list[ImageObject]]:
    """Assign each object to a grid tile containing its box grown by `margin` (else a tile of its own)."""
    if tile <= 0 or max(shape) <= tile:
        return {(0, 0, shape[0], shape[1]): list(objects)}
    grid = grid_windows(shape, tile, min(overlap, tile - 1))
    starts = np.array(grid)
    plan: dict[Window, list[ImageObject]] = defaultdict(list)
    for obj in objects:
        rows, cols = obj.slices
        r0, c0 = max(rows.start - margin, 0), max(cols.start - margin, 0)
        r1, c1 = min(rows.stop + margin, shape[0]), min(cols.stop + margin, shape[1])
        fits = (starts[:, 0] <= r0) & (starts[:, 1] <= c0) & (starts[:, 2] >= r1) & (starts[:, 3] >= c1)
        if fits.any():
            centres = (starts[:, :2] + starts[:, 2:]) / 2
            d = np.hypot(centres[:, 0] - (r0 + r1) / 2, centres[:, 1] - (c0 + c1) / 2)
            d[~fits] = np.inf
            plan[tuple(int(v) for v in grid[int(d.argmin())])].append(obj)
        else:
            plan[tile_for_object(obj, shape, tile)].append(obj)
    return dict(plan)


def run_mode_model(predictor: Predictor, objects: list[ImageObject], window: Window, mode: PromptMode,
                   seed: int, case_key: int, multimask: bool = False) -> list[ObjectRun]:
    """Run one prompt mode for all objects of one tile (the predictor holds the tile's embedding)."""
    shape = (window[2] - window[0], window[3] - window[1])
    truths = [o.mask_in(window) for o in objects]
    rngs = [object_rng(seed, case_key, o.label, _mode_key(mode)) for o in objects]
    runs = [ObjectRun(o) for o in objects]
    prompts = [initial_prompt(mode, t, r, shape) for t, r in zip(truths, rngs)]
    logits: list[np.ndarray | None] = [None] * len(objects)
    active = list(range(len(objects)))
    for step in range(mode.n_steps):
        if step > 0:
            still = []
            for i in active:
                click = next_click(runs[i].masks[-1], truths[i], rngs[i])
                if click is None:  # perfect already: the remaining steps repeat the last result
                    continue
                prompts[i] = prompts[i].with_click(*click)
                still.append(i)
            for i in set(active) - set(still):
                r = runs[i]
                for _ in range(mode.n_steps - step):
                    r.prompts.append(r.prompts[-1])
                    r.masks.append(r.masks[-1])
                    r.pred_iou.append(r.pred_iou[-1])
                    r.seconds.append(0.0)
            active = still
        if not active:
            break
        kwargs = stack_prompts([prompts[i] for i in active])
        if step > 0:
            kwargs["mask_input"] = np.stack([logits[i] for i in active])[:, None]
        t0 = time.perf_counter()
        masks, q, low = predictor.predict(multimask=multimask, **kwargs).best()
        dt = (time.perf_counter() - t0) / len(active)
        for j, i in enumerate(active):
            runs[i].prompts.append(prompts[i])
            runs[i].masks.append(masks[j])
            runs[i].pred_iou.append(float(q[j]))
            runs[i].seconds.append(dt)
            logits[i] = low[j]
    return runs


def run_mode_baseline(image: np.ndarray, objects: list[ImageObject], window: Window, mode: PromptMode,
                      seed: int, case_key: int, margin: int) -> list[ObjectRun]:
    """The same prompt mode (same seeds, same click rule) through the random-walker baseline."""
    from medsamkit.engines.baseline import random_walker_segment

    shape = (window[2] - window[0], window[3] - window[1])
    runs = []
    for o in objects:
        truth = o.mask_in(window)
        rng = object_rng(seed, case_key, o.label, _mode_key(mode))
        prompt = initial_prompt(mode, truth, rng, shape)
        run = ObjectRun(o)
        for step in range(mode.n_steps):
            if step > 0:
                click = next_click(run.masks[-1], truth, rng)
                if click is not None:
                    prompt = prompt.with_click(*click)
            t0 = time.perf_counter()
            mask = run.masks[-1] if step > 0 and click is None else random_walker_segment(image, prompt, margin)
            run.prompts.append(prompt)
            run.masks.append(mask)
            run.pred_iou.append(float("nan"))
            run.seconds.append(time.perf_counter() - t0)
        runs.append(run)
    return runs


def check_run_config(out: Path, config: dict, keys: tuple[str, ...]) -> None:
    """Refuse to resume into `out` when it holds results made with other `keys`; record this config there."""
    cfg_path = out / "config.json"
    current = json.loads(json.dumps({k: config.get(k) for k in keys}, default=str))
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        diff = [k for k in keys if old.get(k) != current[k]]
        if diff:
            raise InputError(
                f"{out}: holds results of a different configuration ({', '.join(diff)} differ); "
                "use another --out folder"
            )
    cfg_path.write_text(json.dumps({**config, **current}, indent=2, default=str))


def run_identity(cfg) -> dict:
    """A run's settings for the resume check, plus the sha256 of a fine-tuned model file (so a newer
    best.pt under the same path is a different run, not a continuation)."""
    from medsamkit.models.registry import model_fingerprint

    config = {k: v for k, v in asdict(cfg).items() if k != "show_progress"}
    return {**config, "model_sha256": model_fingerprint(cfg.model)}


class ResultsStore:
    """Append-only per-object / per-image CSVs with a list of finished images, so runs resume exactly."""

    def __init__(self, out: Path, config: dict) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        check_run_config(out, config, RESULT_KEYS)
        self.objects_csv = out / "per_object.csv"
        self.images_csv = out / "per_image.csv"
        self.done_path = out / "done.txt"
        self.done = set(self.done_path.read_text().split("\n")) - {""} if self.done_path.exists() else set()
        self._drop_unfinished()

    def _drop_unfinished(self) -> None:
        """Rows of an image that was interrupted before being marked done are removed (recomputed later)."""
        for path, fields in ((self.objects_csv, OBJECT_FIELDS), (self.images_csv, IMAGE_FIELDS)):
            if not path.exists():
                continue
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r["image"] in self.done]
            with path.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fields)
                w.writeheader()
                w.writerows(rows)

    def add_image(self, image_row: dict, object_rows: list[dict]) -> None:
        """Append one finished image's rows, then mark it done (in that order)."""
        for path, fields, rows in ((self.objects_csv, OBJECT_FIELDS, object_rows),
                                   (self.images_csv, IMAGE_FIELDS, [image_row])):
            new = not path.exists()
            with path.open("a", newline="") as fh:
                w = csv.DictWriter(fh, fields)
                if new:
                    w.writeheader()
                w.writerows(rows)
                fh.flush()
        with self.done_path.open("a") as fh:
            fh.write(image_row["image"] + "\n")
        self.done.add(image_row["image"])


def _rows(case: Case, window: Window, mode: PromptMode, method: str, runs: list[ObjectRun]) -> list[dict]:
    rows = []
    for run in runs:
        truth = run.obj.mask_in(window)
        for k, (p, m, q, s) in enumerate(zip(run.prompts, run.masks, run.pred_iou, run.seconds)):
            rows.append({
                "image": case.name, "object": run.obj.label, "area": run.obj.area, "method": method,
                "mode": mode.name, "step": k + 1, "n_points": len(p.points),
                "dice": round(dice(m, truth), 6), "iou": round(iou(m, truth), 6),
                "predicted_iou": "" if np.isnan(q) else round(q, 5), "seconds": round(s, 5),
                "final": int(k == len(run.masks) - 1), "tile": ":".join(str(int(v)) for v in window),
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
        predictor.set_embedding(cache.get_or_compute(predictor, tile_img), source)
    else:
        predictor.set_image(tile_img, source)
    return time.perf_counter() - t0


def evaluate_case(case: Case, predictor: Predictor, modes: list[PromptMode], cfg: EvaluateConfig,
                  cache=None) -> tuple[dict, list[dict], dict[str, np.ndarray]]:
    """All modes on one image: (per-image row, per-object rows, final label maps per mode if saving)."""
    objs = extract_objects(case.label, case.kind, cfg.min_area, cfg.min_fraction)
    key = _case_key(case.name)
    chosen = _select_objects(list(objs), cfg.max_objects, cfg.seed, key)
    shape = case.label.shape[:2]
    tile = tile_size_for(shape, cfg.tile_size, predictor.model.preprocessing.input_size)
    plan = plan_tiles(chosen, shape, tile, cfg.tile_overlap) if chosen else {}
    rows: list[dict] = []
    saved = {m.name: np.zeros(shape, np.uint16) for m in modes} if cfg.save_masks else {}
    embed_s = decode_s = base_s = 0.0
    for window, tile_objs in plan.items():
        y0, x0, y1, x1 = window
        tile_img = case.image[y0:y1, x0:x1]
        embed_s += _embed(predictor, tile_img, f"{case.name}[{y0}:{y1},{x0}:{x1}]", cache)
        for mode in modes:
            runs = run_mode_model(predictor, tile_objs, window, mode, cfg.seed, key, cfg.multimask)
            decode_s += sum(sum(r.seconds) for r in runs)
            rows += _rows(case, window, mode, "model", runs)
            if cfg.save_masks:
                for r in runs:
                    saved[mode.name][y0:y1, x0:x1][r.masks[-1]] = r.obj.label
            if cfg.baseline:
                margin = max(16, min(y1 - y0, x1 - x0) // 8)
                bruns = run_mode_baseline(tile_img, tile_objs, window, mode, cfg.seed, key, margin)
                base_s += sum(sum(r.seconds) for r in bruns)
                rows += _rows(case, window, mode, "random_walker", bruns)
    image_row = {"image": case.name, "objects": len(chosen), "skipped_small": objs.skipped_small,
                 "tiles": len(plan), "embed_seconds": round(embed_s, 4), "decode_seconds": round(decode_s, 4),
                 "baseline_seconds": round(base_s, 4)}
    return image_row, rows, saved


def iter_cases(cfg: EvaluateConfig) -> Iterator[Case]:
    """The dataset's 2D cases, limited to --max-images images/volumes."""
    ds = open_dataset(cfg.data)
    if len(ds) == 0:
        raise InputError(f"{cfg.data}: empty dataset")
    yield from ds.cases(cfg.max_images)


def evaluate(cfg: EvaluateConfig, predictor: Predictor | None = None,
             on_image: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) an evaluation; writes CSVs, summary.json/.md and figures under cfg.out; returns the summary."""
    from medsamkit.models import load_model
    from medsamkit.reports.evaluation import write_reports
    from medsamkit.runtime import setup

    modes = parse_modes(cfg.prompts)
    out = Path(cfg.out)
    store = ResultsStore(out, run_identity(cfg))
    if predictor is None:
        predictor = Predictor(load_model(cfg.model, cfg.checkpoint, setup(cfg.device)), cfg.batch_size)
    cache = None
    if cfg.cache:
        from medsamkit.engines.embed import EmbeddingCache

        cache = EmbeddingCache(cfg.cache, predictor.model)
    interrupted = False
    n_new = 0
    bar = tqdm(desc="evaluate", unit="img", disable=not cfg.show_progress)
    try:
        for case in iter_cases(cfg):
            if case.name in store.done:
                continue
            image_row, rows, saved = evaluate_case(case, predictor, modes, cfg, cache)
            for mode_name, lab in saved.items():
                from medsamkit.io.images import write_mask

                write_mask(out / "masks" / mode_name / f"{case.name.replace('/', '__')}.png", lab)
            store.add_image(image_row, rows)
            n_new += 1
            bar.update(1)
            if on_image:
                on_image(image_row)
    except KeyboardInterrupt:
        interrupted = True
    except InputError:
        # a bad case stops the run, but what was finished is reported first
        bar.close()
        if store.done:
            write_reports(out, modes, None, cfg)
        raise
    finally:
        bar.close()
    if not store.done:
        raise InputError(f"{cfg.data}: no image with objects was evaluated")
    summary = write_reports(out, modes, predictor if cfg.figures else None, cfg)
    summary["interrupted"] = interrupted
    summary["new_images"] = n_new
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if interrupted:
        raise KeyboardInterrupt
    return summary
