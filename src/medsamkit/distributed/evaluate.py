"""`medsamkit evaluate --workers N / --scheduler ADDRESS`: the evaluation engine with one task per image or
volume. Workers compute rows and write the case's masks (atomic writes); the driver alone appends rows to
the run's store, so a distributed run and a local one give the same rows (order aside) and the same summary.
"""

from __future__ import annotations

from collections.abc import Callable

from medsamkit.distributed.cluster import DaskConfig, close_client, open_client
from medsamkit.distributed.runner import run_tasks
from medsamkit.distributed.worker_state import worker_cache, worker_dataset, worker_predictor
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.engine import evaluate_case, finish, mask_path, open_store
from medsamkit.io.datasets import VolumeCase
from medsamkit.io.images import write_mask
from medsamkit.prompts import parse_modes


def evaluate_item(cfg: EvaluateConfig, index: int, done: frozenset[str]) -> dict:
    """Worker task: every not-yet-done 2D case of dataset item ``index`` (an image, or a volume's slices)."""
    from pathlib import Path

    item = worker_dataset(cfg.data, cfg.window).loaders[index]()
    cases = item.slices() if isinstance(item, VolumeCase) else [item]
    modes = parse_modes(cfg.prompts)
    out = []
    for case in cases:
        if case.name in done:
            continue
        predictor = worker_predictor(cfg.model, cfg.checkpoint, cfg.device, cfg.batch_size)
        image_row, rows, saved = evaluate_case(case, predictor, modes, cfg, worker_cache(cfg.cache, predictor))
        for mode_name, lab in saved.items():
            write_mask(mask_path(Path(cfg.out), mode_name, case.name), lab)
        out.append({"name": case.name, "image_row": image_row, "rows": rows})
    return {"cases": out}


def evaluate_on_cluster(cfg: EvaluateConfig, dask: DaskConfig,
                        on_case: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) an evaluation on Dask; same files and summary as `evaluation.engine.evaluate`."""
    from medsamkit.evaluation.engine import iter_dataset

    modes = parse_modes(cfg.prompts)
    store = open_store(cfg)
    n_items = len(iter_dataset(cfg))
    done = frozenset(store.done)
    new = []

    def take(result: dict) -> None:
        for case in result["cases"]:
            if not store.is_done(case["name"]):
                store.add_case(case["name"], {"per_object": case["rows"], "per_image": [case["image_row"]]})
                new.append(case["name"])
                if on_case:
                    on_case(case["image_row"])

    client = open_client(dask)
    try:
        report = run_tasks(client, evaluate_item, [(cfg, i, done) for i in range(n_items)], take,
                           retries=dask.retries, desc="evaluate", show_progress=cfg.show_progress)
    finally:
        close_client(client)
    summary = finish(cfg, store, modes, report.interrupted, len(new))
    summary["failed"] = report.errors
    if report.interrupted:
        raise KeyboardInterrupt
    return summary
