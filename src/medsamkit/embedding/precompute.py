"""`medsamkit embed`: precompute the embeddings of every image / tile of a dataset into the cache.

The windows embedded are exactly those `evaluate` and `finetune` ask for with the same ``--tile`` and
``--tile-overlap`` (``image_windows``), so a precomputed cache is what the other verbs read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsamkit.core.atomic import write_json_atomic
from medsamkit.core.batch import Executor, Task, run_batch
from medsamkit.core.errors import InputError
from medsamkit.core.objects import Window, extract_objects
from medsamkit.core.tiling import AutoTile, grid_windows, plan_tiles, tile_size_for
from medsamkit.embedding.cache import EmbeddingCache, encoder_fingerprint
from medsamkit.embedding.resources import LocalResources, Resources
from medsamkit.io.datasets import Dataset, VolumeCase, open_dataset
from medsamkit.predictor import Predictor


def image_windows(label: np.ndarray, kind: str, tile: int, overlap: int, min_area: int = 20) -> list[Window]:
    """Every window the evaluate engine may embed for this image: with an explicit tile the grid plus any
    per-object tiles; with the auto view rule exactly the views its objects get (the whole image and the
    native tiles of small objects; the whole image when there is no object)."""
    shape = label.shape[:2]
    whole = (0, 0, int(shape[0]), int(shape[1]))
    if tile <= 0 or max(shape) <= tile:
        return [whole]
    objects = list(extract_objects(label, kind, min_area))
    if isinstance(tile, AutoTile):
        views = sorted(tuple(int(v) for v in w) for w in plan_tiles(objects, shape, tile, overlap)) if objects else []
        return views or [whole]
    windows = [tuple(int(v) for v in w) for w in grid_windows(shape, tile, min(overlap, tile - 1))]
    extra = [w for w in plan_tiles(objects, shape, tile, overlap) if w not in windows] if objects else []
    return windows + sorted(extra)


@dataclass
class EmbedConfig:
    """Everything `medsamkit embed` needs."""

    data: str
    out: str
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    tile_size: int | None = None
    tile_overlap: int = 64
    max_images: int | None = None
    min_area: int = 20
    window: str | None = None  # CT/MR intensity window of volume SPECs (as evaluate's --window)
    show_progress: bool = True


def embed_case(case, predictor: Predictor, cache: EmbeddingCache, cfg: EmbedConfig) -> dict:
    """Embed (or verify in the cache) every window of one 2D case; its index entry {shape, tiles: {window: key}}."""
    shape = case.image.shape[:2]
    tile = tile_size_for(shape, cfg.tile_size, predictor.model.preprocessing.input_size)
    entry = {}
    for y0, x0, y1, x1 in image_windows(case.label, case.kind, tile, cfg.tile_overlap, cfg.min_area):
        tile_img = case.image[y0:y1, x0:x1]
        key = cache.key(tile_img)
        if cache.load(key) is None:
            cache.save(key, predictor.embed(tile_img, f"{case.name}[{y0}:{y1},{x0}:{x1}]"))
            cache.stats["computed"] += 1
        else:
            cache.stats["hits"] += 1
        entry[f"{y0}:{x0}:{y1}:{x1}"] = key
    return {"shape": list(shape), "tiles": entry}


class CacheIndex:
    """OUT/index.json: which windows of which case are in the cache, rewritten atomically after each case."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / "index.json"
        self.index = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.images = self.index.setdefault("images", {})

    def add(self, name: str, entry: dict, header: dict) -> None:
        """Record one case's windows (``header``: the model they were computed with, `index_header`) and rewrite
        the index (it stays valid if the run is interrupted)."""
        self.index.update(header)
        self.images[name] = entry
        write_json_atomic(self.path, self.index, indent=1)


def index_header(model) -> dict:
    """What identifies the embeddings of a cache: the model's name, encoder fingerprint and preprocessing."""
    return {"model": model.name, "encoder_fingerprint": encoder_fingerprint(model),
            "preprocessing": repr(model.preprocessing)}


def open_embed_dataset(cfg: EmbedConfig) -> Dataset:
    """The dataset `embed` runs over, cut to --max-images (InputError when empty)."""
    ds = open_dataset(cfg.data, window=cfg.window)
    if len(ds) == 0:
        raise InputError(f"{cfg.data}: empty dataset")
    return ds.head(cfg.max_images)


def embed_item(res: Resources, cfg: EmbedConfig, index: int) -> Iterator[dict]:
    """Task: embed every 2D case of dataset item ``index``; per case its index entry and cache counts."""
    item = res.item(cfg.data, cfg.window, None, index)
    for case in item.slices() if isinstance(item, VolumeCase) else [item]:
        predictor = res.predictor(cfg.model, cfg.checkpoint, cfg.device)
        cache = res.cache(cfg.out, predictor)
        before = dict(cache.stats)
        entry = embed_case(case, predictor, cache, cfg)
        yield {"name": case.name, "entry": entry, "header": index_header(predictor.model),
               "stats": {k: cache.stats[k] - before[k] for k in before}}


class EmbedJob:
    """A cache folder being filled, as a batch job (``core.batch.BatchJob``)."""

    desc, unit = "embed", "case"

    def __init__(self, cfg: EmbedConfig, predictor: Predictor | None = None) -> None:
        self.cfg, self.show_progress = cfg, cfg.show_progress
        dataset = open_embed_dataset(cfg)
        self.n_items = len(dataset)
        self.resources = LocalResources(predictor, {(cfg.data, cfg.window, None): dataset})
        self.index = CacheIndex(cfg.out)
        self.totals = {"hits": 0, "computed": 0, "discarded": 0}
        self.n_tiles = 0

    def tasks(self, slots: int | None) -> list[Task]:  # noqa: D102
        return [Task(embed_item, (self.cfg, i)) for i in range(self.n_items)]

    def take(self, result: dict) -> None:  # noqa: D102
        self.index.add(result["name"], result["entry"], result["header"])
        self.n_tiles += len(result["entry"]["tiles"])
        for k, v in result["stats"].items():
            self.totals[k] = self.totals.get(k, 0) + v

    def finish(self, interrupted: bool) -> dict:  # noqa: D102
        return {"images": len(self.index.images), "tiles": self.n_tiles, **self.totals, "index": str(self.index.path)}

    def has_results(self) -> bool:  # noqa: D102
        return bool(self.index.images)


def embed_dataset(cfg: EmbedConfig, predictor: Predictor | None = None, executor: Executor | None = None) -> dict:
    """Precompute (or complete) the cache for every image/tile of a dataset (here, or with ``executor``, e.g. on
    Dask); writes OUT/index.json."""
    return run_batch(EmbedJob(cfg, predictor), executor)
