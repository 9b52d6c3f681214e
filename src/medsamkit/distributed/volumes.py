"""`medsamkit evaluate-volume` and `segment-volume SPEC -o FOLDER` with `--workers N / --scheduler ADDRESS`:
one task per volume. Workers compute the volume's rows (and write its label maps); the driver records them
in the run's store as tasks finish."""

from __future__ import annotations

from medsamkit.core.errors import InputError
from medsamkit.distributed.cluster import DaskConfig, close_client, open_client
from medsamkit.distributed.runner import run_tasks
from medsamkit.distributed.worker_state import worker_cache, worker_dataset, worker_predictor
from medsamkit.io.datasets import VolumeCase
from medsamkit.io.windowing import parse_window
from medsamkit.volumes.evaluate import EvaluateVolumeConfig, VolumeRun, compute_volume, open_volume_dataset
from medsamkit.volumes.segment import parse_class_list
from medsamkit.volumes.segment_many import (
    SegmentVolumesConfig,
    finish_segment_run,
    open_segment_run,
    segment_case,
)
from medsamkit.volumes.variants import variants


def evaluate_volume_item(cfg: EvaluateVolumeConfig, index: int, n_volumes: int,
                         finished: frozenset[tuple[str, str]], done: frozenset[str]) -> dict:
    """Worker task: the rows of volume ``index`` for the variants it still needs."""
    kind = "class" if not str(cfg.data).startswith("builtin:") else None
    case = worker_dataset(cfg.data, cfg.window, kind).loaders[index]()
    if not isinstance(case, VolumeCase):
        raise InputError(f"{cfg.data}: evaluate-volume needs volumes; use `evaluate` for 2D images")
    runs = [] if cfg.predictions else variants(cfg.prompts, cfg.propagate, cfg.three_slice, cfg.min_iou)
    names = ["predictions"] if cfg.predictions else [v.name for v in runs]
    if case.name in done and all((case.name, n) in finished for n in names):
        return {"name": case.name, "rows": None}
    todo = [r for r in runs if (case.name, r.name) not in finished]

    def model():
        predictor = worker_predictor(cfg.model, cfg.checkpoint, cfg.device)
        return predictor, worker_cache(cfg.cache, predictor)

    rows = compute_volume(cfg, case, todo, n_volumes, model, parse_class_list(cfg.classes))
    return {"name": case.name, "rows": rows}


def evaluate_volumes_on_cluster(cfg: EvaluateVolumeConfig, dask: DaskConfig) -> dict:
    """Run (or resume) `evaluate-volume` on Dask; the same rows and summary as a local run."""
    run = VolumeRun(cfg)  # refuses a folder of another configuration before anything starts
    dataset = open_volume_dataset(cfg.data, parse_window(cfg.window))
    n = len(dataset.head(cfg.max_images))
    finished, done = frozenset(run.finished), frozenset(run.store.done)
    new = []

    def take(result: dict) -> None:
        if result["rows"] is not None and run.record(result["name"], result["rows"]):
            new.append(result["name"])

    client = open_client(dask)
    try:
        report = run_tasks(client, evaluate_volume_item, [(cfg, i, n, finished, done) for i in range(n)], take,
                           retries=dask.retries, desc="volumes", show_progress=cfg.show_progress)
    finally:
        close_client(client)
    summary = run.finish(report.interrupted, len(new))
    summary["failed"] = report.errors
    if report.interrupted:
        raise KeyboardInterrupt
    return summary


def segment_volume_item(cfg: SegmentVolumesConfig, index: int, done: frozenset[str]) -> dict:
    """Worker task: segment volume ``index`` into OUT/<volume>.nii.gz; its per-class rows (None: done)."""
    kind = "class" if not str(cfg.data).startswith("builtin:") else None
    case = worker_dataset(cfg.data, cfg.window, kind).loaders[index]()
    if getattr(case, "name", None) in done:
        return {"name": case.name, "rows": None}

    def model():
        predictor = worker_predictor(cfg.model, cfg.checkpoint, cfg.device)
        return predictor, worker_cache(cfg.cache, predictor)

    return {"name": case.name, "rows": segment_case(cfg, case, model)}


def segment_volumes_on_cluster(cfg: SegmentVolumesConfig, dask: DaskConfig) -> dict:
    """`segment-volume SPEC -o FOLDER` on Dask, one task per volume; the same files and rows as a local run."""
    store = open_segment_run(cfg)  # refuses a folder of another configuration before anything starts
    n = len(open_volume_dataset(cfg.data, parse_window(cfg.window)).head(cfg.max_images))
    done, new = frozenset(store.done), []

    def take(result: dict) -> None:
        if result["rows"] is not None and not store.is_done(result["name"]):
            store.add_case(result["name"], {"per_class": result["rows"]})
            new.append(result["name"])

    client = open_client(dask)
    try:
        report = run_tasks(client, segment_volume_item, [(cfg, i, done) for i in range(n)], take,
                           retries=dask.retries, desc="volumes", show_progress=cfg.show_progress)
    finally:
        close_client(client)
    summary = finish_segment_run(cfg, store, report.interrupted, len(new))
    summary["failed"] = report.errors
    if report.interrupted:
        raise KeyboardInterrupt
    return summary
