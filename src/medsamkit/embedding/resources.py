"""What a batch run's tasks read: dataset items, the predictor, the embedding cache (``core.batch``).

A task asks its resources for them instead of opening them itself, so the same task function runs in this
process (`LocalResources`: a given predictor, or the model loaded on first need, so a finished run loads
none) and on a Dask worker (``distributed.worker_state``: one model per worker process, reused by its tasks).
"""

from __future__ import annotations

from typing import Protocol

from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.io.datasets import Case, Dataset, VolumeCase, open_dataset
from medsamkit.predictor import Predictor


class Resources(Protocol):
    """The interface a task function gets as its first argument."""

    def item(self, spec: str, window: str | None, kind: str | None, index: int) -> Case | VolumeCase:
        """Item ``index`` (an image or a volume) of the dataset ``open_dataset(spec, kind, window)``."""

    def predictor(self, model: str, checkpoint: str | None, device: str | None, batch_size: int = 32) -> Predictor:
        """The predictor of a model (loaded on first use)."""

    def cache(self, folder: str | None, predictor: Predictor) -> EmbeddingCache | None:
        """The embedding cache in ``folder`` for the predictor's model (None without a folder)."""


class LocalResources:
    """Resources of a run in this process: one predictor (given, or loaded on first need), one cache per folder,
    the datasets it opened (or was given)."""

    def __init__(self, predictor: Predictor | None = None, datasets: dict[tuple, Dataset] | None = None) -> None:
        self._predictor = predictor
        self._datasets = dict(datasets or {})
        self.caches: dict[str, EmbeddingCache] = {}

    def item(self, spec: str, window: str | None, kind: str | None, index: int) -> Case | VolumeCase:  # noqa: D102
        key = (spec, window, kind)
        if key not in self._datasets:
            self._datasets[key] = open_dataset(spec, kind, window)
        return self._datasets[key].loaders[index]()

    def predictor(self, model: str, checkpoint: str | None, device: str | None,  # noqa: D102
                  batch_size: int = 32) -> Predictor:
        if self._predictor is None:
            from medsamkit.core.runtime import select_device
            from medsamkit.models import load_model

            self._predictor = Predictor(load_model(model, checkpoint, select_device(device)), batch_size)
        return self._predictor

    def cache(self, folder: str | None, predictor: Predictor) -> EmbeddingCache | None:  # noqa: D102
        if not folder:
            return None
        if folder not in self.caches:
            self.caches[folder] = EmbeddingCache(folder, predictor.model)
        return self.caches[folder]
