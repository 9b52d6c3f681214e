"""Image-embedding cache on disk (one checked .npz per image/tile) and `medsamkit embed` precomputation.

An entry's key covers the image bytes, shape and dtype, the model name, a fingerprint of the encoder
weights and the preprocessing, so a cached embedding is only ever reused for exactly the same input.
Entries carry their key and a sha256 of the features; anything unreadable or inconsistent is reported,
deleted and recomputed, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medsamkit.core.errors import InputError
from medsamkit.core.tiling import tile_size_for
from medsamkit.predictor import Embedding, Predictor

log = logging.getLogger("medsamkit.embed")
Window = tuple[int, int, int, int]
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def encoder_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the image encoder's state dict (names, shapes, dtypes, values); computed once per model."""
    if model in _FINGERPRINTS:
        return _FINGERPRINTS[model]
    digest = hashlib.sha256()
    for name, tensor in sorted(model.image_encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    _FINGERPRINTS[model] = digest.hexdigest()
    return _FINGERPRINTS[model]


def _features_checksum(features: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(features).tobytes()).hexdigest()


class EmbeddingCache:
    """A folder of embeddings for one model; `get_or_compute` is what the engines call."""

    def __init__(self, folder: str | Path, model: torch.nn.Module) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder}: embedding cache must be a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.stats = {"hits": 0, "computed": 0, "discarded": 0}

    @property
    def expected_shape(self) -> tuple[int, ...]:
        """Shape of one entry's features: (1, 256, h, w) from the prompt encoder's embedding grid."""
        h, w = self.model.prompt_encoder.image_embedding_size
        return 1, self.model.prompt_encoder.embed_dim, int(h), int(w)

    def key(self, image: np.ndarray) -> str:
        """sha256 hex over image bytes + shape + dtype + model name + encoder fingerprint + preprocessing."""
        arr = np.ascontiguousarray(image)
        digest = hashlib.sha256()
        digest.update(arr.tobytes())
        digest.update(f"|{arr.shape}|{arr.dtype.str}|{self.model.name}|".encode())
        digest.update(encoder_fingerprint(self.model).encode())
        digest.update(repr(self.model.preprocessing).encode())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        """File of one entry."""
        return self.folder / f"{key}.npz"

    def _discard(self, path: Path, reason: str) -> None:
        log.warning("%s: %s; deleting the cache entry and recomputing", path, reason)
        self.stats["discarded"] += 1
        path.unlink(missing_ok=True)

    def load(self, key: str) -> Embedding | None:
        """The valid entry for `key`, or None (a bad entry is reported and deleted)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                features = npz["features"]
                stored_key = str(npz["key"])
                checksum = str(npz["checksum"])
                original = tuple(int(v) for v in npz["original_size"])
                input_size = tuple(int(v) for v in npz["input_size"])
        except Exception as exc:  # zip/CRC/format errors: the file is damaged
            self._discard(path, f"unreadable ({type(exc).__name__}: {str(exc)[:80]})")
            return None
        if stored_key != key:
            self._discard(path, "entry belongs to another key")
            return None
        if features.shape != self.expected_shape or features.dtype != np.float32:
            self._discard(path, f"features {features.dtype} {features.shape}, expected float32 {self.expected_shape}")
            return None
        if len(original) != 2 or len(input_size) != 2:
            self._discard(path, "bad image geometry")
            return None
        if _features_checksum(features) != checksum:
            self._discard(path, "features checksum mismatch")
            return None
        return Embedding(torch.from_numpy(features), original, input_size)

    def save(self, key: str, embedding: Embedding) -> Path:
        """Write one entry atomically (temporary file in the same folder, then rename)."""
        features = embedding.features.detach().float().cpu().numpy()
        path = self.path(key)
        tmp = self.folder / f".{key}.{os.getpid()}.tmp"
        with tmp.open("wb") as fh:
            np.savez(fh, features=features, key=np.array(key), checksum=np.array(_features_checksum(features)),
                     original_size=np.array(embedding.original_size, dtype=np.int64),
                     input_size=np.array(embedding.input_size, dtype=np.int64))
        os.replace(tmp, path)
        return path

    def get_or_compute(self, predictor: Predictor, image: np.ndarray, source: object | None = None) -> Embedding:
        """The cached embedding of `image`, computing and storing it on a miss (features float32 on CPU)."""
        key = self.key(image)
        cached = self.load(key)
        if cached is not None:
            self.stats["hits"] += 1
            return cached
        emb = predictor.embed(image, source)
        self.save(key, emb)
        self.stats["computed"] += 1
        features = emb.features.detach().float().cpu().clone()  # an ordinary tensor (not an inference one)
        return Embedding(features, tuple(emb.original_size), tuple(emb.input_size))


def image_windows(label: np.ndarray, kind: str, tile: int, overlap: int, min_area: int = 20) -> list[Window]:
    """Every window the evaluate engine may embed for this image: the grid plus any per-object tiles."""
    from medsamkit.core.objects import extract_objects
    from medsamkit.core.tiling import grid_windows
    from medsamkit.core.tiling import plan_tiles

    shape = label.shape[:2]
    if tile <= 0 or max(shape) <= tile:
        return [(0, 0, int(shape[0]), int(shape[1]))]
    windows = [tuple(int(v) for v in w) for w in grid_windows(shape, tile, min(overlap, tile - 1))]
    objects = list(extract_objects(label, kind, min_area))
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
    show_progress: bool = True


def embed_dataset(cfg: EmbedConfig, predictor: Predictor | None = None) -> dict:
    """Precompute (or complete) the cache for every image/tile of a dataset; writes OUT/index.json."""
    from medsamkit.core.runtime import select_device
    from medsamkit.io.datasets import open_dataset
    from medsamkit.models import load_model

    if predictor is None:
        predictor = Predictor(load_model(cfg.model, cfg.checkpoint, select_device(cfg.device)))
    cache = EmbeddingCache(cfg.out, predictor.model)
    index_path = Path(cfg.out) / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    images = index.setdefault("images", {})
    index.update(model=predictor.model.name, encoder_fingerprint=encoder_fingerprint(predictor.model),
                 preprocessing=repr(predictor.model.preprocessing))
    ds = open_dataset(cfg.data)
    if len(ds) == 0:
        raise InputError(f"{cfg.data}: empty dataset")
    n_tiles = 0
    bar = tqdm(ds.cases(cfg.max_images), desc="embed", unit="img", disable=not cfg.show_progress)
    for case in bar:
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
            n_tiles += 1
        images[case.name] = {"shape": list(shape), "tiles": entry}
        tmp = index_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, index_path)  # the index stays valid if interrupted
        bar.set_postfix(computed=cache.stats["computed"], cached=cache.stats["hits"])
    return {"images": len(images), "tiles": n_tiles, **cache.stats, "index": str(index_path)}
