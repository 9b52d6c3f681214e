"""The 2D model input of a volume's slices, and the encoder passes that serve every class and prompt mode.

A slice is encoded at most once per volume and input kind (1 slice or 3 neighbouring slices): recent
embeddings stay in memory, and with an embedding cache (``medsamkit.embedding.cache``) they are also kept on
disk, keyed by the windowed slice input itself, so a rerun or another variant reuses them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medsamkit.core.errors import InputError
from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.predictor import Embedding, Predictor


def slice_input(image01: np.ndarray, z: int, three_slice: bool = False) -> np.ndarray:
    """The 2D model input of slice ``z``: the slice itself (H, W), or slices z-1, z, z+1 as (H, W, 3).

    Edge slices repeat themselves as their missing neighbour (slice 0 gives channels 0, 0, 1).
    """
    n = image01.shape[0]
    if not 0 <= z < n:
        raise InputError(f"slice {z} is outside the volume (0..{n - 1})")
    if not three_slice:
        return image01[z]
    picks = [max(z - 1, 0), z, min(z + 1, n - 1)]
    return np.stack([image01[k] for k in picks], axis=-1)


class SliceEmbedder:
    """Encoder passes for the slices of one volume, kept (up to ``max_cached``) so classes/modes share them.

    ``cache``: an `EmbeddingCache` (or its folder) where embeddings are also saved and reloaded, checked.
    """

    def __init__(self, predictor: Predictor, image01: np.ndarray, three_slice: bool = False,
                 source: str = "", max_cached: int = 256, show_progress: bool = False,
                 cache: EmbeddingCache | str | Path | None = None, total: int | None = None) -> None:
        self.predictor = predictor
        if cache is not None and not isinstance(cache, EmbeddingCache):
            cache = EmbeddingCache(cache, predictor.model)
        self.cache = cache
        self.image01 = image01
        self.three_slice = three_slice
        self.source = source
        self.max_cached = max_cached
        # ~4 MB per kept 256x64x64 embedding
        self._recent: OrderedDict[int, Embedding] = OrderedDict()
        self.encoded: set[int] = set()  # slices the encoder ran on (not those read from the cache)
        self.visits: list[int] = []  # every slice asked for, in order (propagation's path)
        self._prompted: set[int] = set()
        self.seconds = 0.0
        # The bar counts the slices prompted; ``total`` when the work is known in advance (slice-wise prompts),
        # None where it is not (propagation stops where the object ends).
        self._bar = tqdm(desc="slices", unit="slice", total=total, disable=not show_progress)

    def close(self) -> None:
        """End the progress bar."""
        self._bar.close()

    def input(self, z: int) -> np.ndarray:
        """The model input of slice ``z`` (what the encoder sees and what the cache key covers)."""
        return slice_input(self.image01, z, self.three_slice)

    def _embed(self, z: int) -> Embedding:
        """Slice ``z``'s embedding from the disk cache, or from an encoder pass."""
        name = f"{self.source}[z={z}]"
        start = time.perf_counter()
        if self.cache is None:
            emb, computed = self.predictor.embed(self.input(z), name), True
        else:
            before = self.cache.stats["computed"]
            emb = self.cache.get_or_compute(self.predictor, self.input(z), name)
            computed = self.cache.stats["computed"] > before
        if computed:
            self.seconds += time.perf_counter() - start
            self.encoded.add(z)
        return emb

    def use(self, z: int) -> Predictor:
        """Point the predictor at slice ``z``'s embedding (encoding it on first use) and return it."""
        if z not in self._prompted:
            self._prompted.add(z)
            self._bar.update(1)
        self.visits.append(z)
        emb = self._recent.get(z)
        if emb is None:
            emb = self._recent[z] = self._embed(z)
            if len(self._recent) > self.max_cached:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(z)
        return self.predictor.set_embedding(emb, f"{self.source}[z={z}]", self.image01[z])
