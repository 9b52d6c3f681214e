"""What a worker process keeps between tasks: one predictor per (model, checkpoint, file sha256, device),
one embedding cache object per folder, one opened dataset per SPEC. A worker holds the model + one case.
`WORKER` serves them to batch tasks (``embedding.resources.Resources``)."""

from __future__ import annotations

import time

from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.io.datasets import Dataset, open_dataset
from medsamkit.predictor import Predictor

_PREDICTORS: dict[tuple, Predictor] = {}
_CACHES: dict[tuple, EmbeddingCache] = {}
_DATASETS: dict[tuple, Dataset] = {}
_ITEM: dict[tuple, object] = {}  # the last item read: the parts of one volume reuse it
_LOADS: list[float] = []  # seconds of model loads not yet reported by a task


def worker_predictor(model: str, checkpoint: str | None, device: str | None, batch_size: int = 32) -> Predictor:
    """The worker's predictor for a model, loaded on first use (a retrained best.pt is a new entry)."""
    from medsamkit.core.runtime import select_device
    from medsamkit.models import load_model

    key = (model, checkpoint, _file_state(model), device)
    if key not in _PREDICTORS:
        _PREDICTORS.clear()  # one model per worker
        _CACHES.clear()
        start = time.perf_counter()
        _PREDICTORS[key] = Predictor(load_model(model, checkpoint, select_device(device)), batch_size)
        _LOADS.append(time.perf_counter() - start)
    predictor = _PREDICTORS[key]
    predictor.batch_size = batch_size
    return predictor


def _file_state(model: str) -> tuple[int, int] | None:
    """(mtime, size) of a fine-tuned model file: a retrained best.pt changes it, and unlike its sha256
    (which the driver records in the run identity) it costs no read of the file on every task."""
    from medsamkit.models.finetuned import run_checkpoint_file
    from medsamkit.models.registry import names_finetuned

    if not names_finetuned(model):
        return None
    path = run_checkpoint_file(model)
    if not path.is_file():
        return None
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def worker_cache(folder: str | None, predictor: Predictor) -> EmbeddingCache | None:
    """The worker's embedding cache for ``folder`` (None: no cache)."""
    if not folder:
        return None
    key = (folder, id(predictor.model))
    if key not in _CACHES:
        _CACHES[key] = EmbeddingCache(folder, predictor.model)
    return _CACHES[key]


def worker_dataset(spec: str, window: str | None = None, kind: str | None = None) -> Dataset:
    """The worker's opened dataset (loaders only; cases are read when a task asks for one)."""
    key = (spec, window, kind)
    if key not in _DATASETS:
        _DATASETS[key] = open_dataset(spec, kind, window)
    return _DATASETS[key]


def worker_item(spec: str, window: str | None, index: int, kind: str | None = None):
    """Dataset item ``index`` (an image, or a volume), kept until another item is asked for: the tasks that
    share a volume's slices and land on one worker read it once."""
    key = (spec, window, kind, index)
    if key not in _ITEM:
        _ITEM.clear()  # one case per worker
        _ITEM[key] = worker_dataset(spec, window, kind).loaders[index]()
    return _ITEM[key]


def take_load_seconds() -> float:
    """Seconds this worker spent loading models since the last call (a task reports its own loads)."""
    seconds = sum(_LOADS)
    _LOADS.clear()
    return seconds


class WorkerResources:
    """A batch task's resources on a Dask worker: this process's kept predictor, caches and datasets."""

    def item(self, spec: str, window: str | None, kind: str | None, index: int):  # noqa: D102
        return worker_item(spec, window, index, kind)

    def predictor(self, model: str, checkpoint: str | None, device: str | None,  # noqa: D102
                  batch_size: int = 32) -> Predictor:
        return worker_predictor(model, checkpoint, device, batch_size)

    def cache(self, folder: str | None, predictor: Predictor) -> EmbeddingCache | None:  # noqa: D102
        return worker_cache(folder, predictor)


WORKER = WorkerResources()
