"""The image-embedding cache on disk: one checked .npz per image/tile, the only embedding cache of the project.

An entry's key covers the image bytes, shape and dtype, the model name, a fingerprint of the encoder
weights and the preprocessing, so a cached embedding is only ever reused for exactly the same input.
Entries carry their key and a sha256 of the features; anything unreadable or inconsistent is reported,
deleted and recomputed, never silently used.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from pathlib import Path

import numpy as np
import torch

from medsamkit.core.atomic import save_npz_atomic
from medsamkit.core.errors import InputError
from medsamkit.predictor import Embedding, Predictor

log = logging.getLogger("medsamkit.embedding")
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
        """Write one entry atomically: several processes writing the same key each rename a whole file."""
        features = embedding.features.detach().float().cpu().numpy()
        return save_npz_atomic(self.path(key), compressed=False, features=features, key=np.array(key),
                               checksum=np.array(_features_checksum(features)),
                               original_size=np.array(embedding.original_size, dtype=np.int64),
                               input_size=np.array(embedding.input_size, dtype=np.int64))

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
