"""`medsamkit samaug masks|priors --workers N / --scheduler ADDRESS`: one task per image. Workers write the
image's masks, priors and visual (atomic writes, the same bytes as a local run); the driver records rows
and rewrites the index as tasks finish."""

from __future__ import annotations

from pathlib import Path

from medsamkit.distributed.cluster import DaskConfig, close_client, open_client
from medsamkit.distributed.runner import run_tasks
from medsamkit.distributed.worker_state import worker_dataset, worker_predictor
from medsamkit.io.datasets import VolumeCase
from medsamkit.samaug.priors import (
    PriorsConfig,
    image_outputs,
    open_run,
    outputs_finished,
    record_image,
    write_index,
)


def priors_item(cfg: PriorsConfig, index: int, done: frozenset[str]) -> dict:
    """Worker task: masks (and priors) of every not-yet-finished 2D case of dataset item ``index``."""
    item = worker_dataset(cfg.data, cfg.window).loaders[index]()
    cases = item.slices() if isinstance(item, VolumeCase) else [item]
    out, rows, skipped = Path(cfg.out), [], []
    for case in cases:
        name = case.name.replace("/", "__")
        if name in done and outputs_finished(out, name, cfg):
            skipped.append(name)
            continue
        row, _ = image_outputs(cfg, out, name, case.image, worker_predictor(cfg.model, cfg.checkpoint, cfg.device))
        rows.append(row)
    return {"rows": rows, "skipped": skipped}


def priors_on_cluster(cfg: PriorsConfig, dask: DaskConfig) -> dict:
    """Everything-mode masks / priors for a dataset on Dask; the same files and index as `compute_priors`."""
    from medsamkit.io.datasets import open_dataset

    dataset = open_dataset(cfg.data, window=cfg.window)
    store = open_run(cfg)
    n = len(dataset.head(cfg.max_images))
    done = frozenset(store.done)
    skipped: set[str] = set()

    def take(result: dict) -> None:
        skipped.update(result["skipped"])
        for row in result["rows"]:
            record_image(store, cfg, row, skipped)

    client = open_client(dask)
    try:
        report = run_tasks(client, priors_item, [(cfg, i, done) for i in range(n)], take, retries=dask.retries,
                           desc="samaug", show_progress=cfg.progress)
    finally:
        close_client(client)
    index = write_index(store, cfg, skipped)
    index["failed"] = report.errors
    if report.interrupted:
        raise KeyboardInterrupt
    return index
