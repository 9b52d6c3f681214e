"""`medsamkit embed --workers N / --scheduler ADDRESS`: one task per image or volume; workers write cache
entries (atomic, content-addressed: two workers writing the same entry leave one valid file), the driver
writes the index as tasks finish."""

from __future__ import annotations

from medsamkit.distributed.cluster import DaskConfig, close_client, open_client
from medsamkit.distributed.runner import run_tasks
from medsamkit.distributed.worker_state import worker_cache, worker_dataset, worker_predictor
from medsamkit.embedding.precompute import CacheIndex, EmbedConfig, embed_case, open_embed_dataset
from medsamkit.io.datasets import VolumeCase


def embed_item(cfg: EmbedConfig, index: int) -> dict:
    """Worker task: embed every 2D case of dataset item ``index``; index entries and cache counts."""
    item = worker_dataset(cfg.data, cfg.window).loaders[index]()
    predictor = worker_predictor(cfg.model, cfg.checkpoint, cfg.device)
    cache = worker_cache(cfg.out, predictor)
    before = dict(cache.stats)
    cases = item.slices() if isinstance(item, VolumeCase) else [item]
    entries = {case.name: embed_case(case, predictor, cache, cfg) for case in cases}
    return {"entries": entries, "stats": {k: cache.stats[k] - before[k] for k in before}}


def embed_on_cluster(cfg: EmbedConfig, dask: DaskConfig) -> dict:
    """Precompute (or complete) the cache on Dask; the same entries and index as `embed_dataset`."""
    from medsamkit.models import load_model

    n_items = len(open_embed_dataset(cfg).head(cfg.max_images))
    index = CacheIndex(cfg.out, load_model(cfg.model, cfg.checkpoint, "cpu"))
    totals = {"computed": 0, "hits": 0, "discarded": 0}
    n_tiles = []

    def take(result: dict) -> None:
        for name, entry in result["entries"].items():
            index.add(name, entry)
            n_tiles.append(len(entry["tiles"]))
        for k, v in result["stats"].items():
            totals[k] = totals.get(k, 0) + v

    client = open_client(dask)
    try:
        report = run_tasks(client, embed_item, [(cfg, i) for i in range(n_items)], take, retries=dask.retries,
                           desc="embed", show_progress=cfg.show_progress)
    finally:
        close_client(client)
    if report.interrupted:
        raise KeyboardInterrupt
    return {"images": len(index.images), "tiles": sum(n_tiles), **totals, "index": str(index.path),
            "failed": report.errors}
