"""`medsamkit embed`: precompute the embeddings of every image / tile of a dataset into the cache.

The windows embedded are exactly those `evaluate` and `finetune` ask for with the same ``--tile`` and
``--tile-overlap`` (``image_windows``), so a precomputed cache is what the other verbs read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medsamkit.core.atomic import write_json_atomic
from medsamkit.core.errors import InputError
from medsamkit.core.objects import extract_objects
from medsamkit.core.runtime import select_device
from medsamkit.core.tiling import AutoTile, grid_windows, plan_tiles, tile_size_for
from medsamkit.embedding.cache import EmbeddingCache, encoder_fingerprint
from medsamkit.io.datasets import open_dataset
from medsamkit.models import load_model
from medsamkit.predictor import Predictor

Window = tuple[int, int, int, int]


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

    def __init__(self, folder: str | Path, model) -> None:
        self.path = Path(folder) / "index.json"
        self.index = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.images = self.index.setdefault("images", {})
        self.index.update(model=model.name, encoder_fingerprint=encoder_fingerprint(model),
                          preprocessing=repr(model.preprocessing))

    def add(self, name: str, entry: dict) -> None:
        """Record one case's windows and rewrite the index (it stays valid if the run is interrupted)."""
        self.images[name] = entry
        write_json_atomic(self.path, self.index, indent=1)


def open_embed_dataset(cfg: EmbedConfig):
    """The dataset `embed` runs over (InputError when empty)."""
    ds = open_dataset(cfg.data, window=cfg.window)
    if len(ds) == 0:
        raise InputError(f"{cfg.data}: empty dataset")
    return ds


def embed_dataset(cfg: EmbedConfig, predictor: Predictor | None = None) -> dict:
    """Precompute (or complete) the cache for every image/tile of a dataset; writes OUT/index.json."""
    if predictor is None:
        predictor = Predictor(load_model(cfg.model, cfg.checkpoint, select_device(cfg.device)))
    cache = EmbeddingCache(cfg.out, predictor.model)
    index = CacheIndex(cfg.out, predictor.model)
    n_tiles = 0
    bar = tqdm(open_embed_dataset(cfg).cases(cfg.max_images), desc="embed", unit="img",
               disable=not cfg.show_progress)
    for case in bar:
        entry = embed_case(case, predictor, cache, cfg)
        index.add(case.name, entry)
        n_tiles += len(entry["tiles"])
        bar.set_postfix(computed=cache.stats["computed"], cached=cache.stats["hits"])
    return {"images": len(index.images), "tiles": n_tiles, **cache.stats, "index": str(index.path)}
