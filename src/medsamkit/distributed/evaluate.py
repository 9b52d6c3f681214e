"""`medsamkit evaluate --workers N / --scheduler ADDRESS`: the evaluation engine with one task per image or
volume. Workers compute rows and write the case's masks (atomic writes); the driver alone appends rows to
the run's store, so a distributed run and a local one give the same rows (order aside) and the same summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from medsamkit.distributed.cluster import DaskConfig, close_client, open_client
from medsamkit.distributed.runner import run_tasks
from medsamkit.distributed.worker_state import worker_cache, worker_item, worker_predictor
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.engine import evaluate_case, finish, mask_path, open_store
from medsamkit.io.datasets import VolumeCase
from medsamkit.io.images import write_mask
from medsamkit.prompts import parse_modes


def evaluate_item(cfg: EvaluateConfig, index: int, done: frozenset[str], part: int = 0, parts: int = 1) -> dict:
    """Worker task: part ``part`` of ``parts`` of dataset item ``index``'s not-yet-done 2D cases: of a volume
    every ``parts``-th labelled slice (whole), of an image every ``parts``-th tile of its plan (a piece the
    driver joins with the others; an image whose masks are kept is not split: part 0 does it whole)."""
    from pathlib import Path

    item = worker_item(cfg.data, cfg.window, index)
    modes = parse_modes(cfg.prompts)
    if isinstance(item, VolumeCase):
        todo = [(c, (0, 1)) for k, c in enumerate(item.slices()) if k % parts == part]
    elif cfg.save_masks or cfg.figures:
        todo = [(item, (0, 1))] if part == 0 else []
    else:
        todo = [(item, (part, parts))]
    out = []
    for case, piece in todo:
        if case.name in done:
            continue
        predictor = worker_predictor(cfg.model, cfg.checkpoint, cfg.device, cfg.batch_size)
        image_row, rows, saved = evaluate_case(case, predictor, modes, cfg, worker_cache(cfg.cache, predictor), piece)
        for mode_name, lab in saved.items():
            write_mask(mask_path(Path(cfg.out), mode_name, case.name), lab)
        out.append({"name": case.name, "image_row": image_row, "rows": rows, "pieces": piece[1]})
    return {"cases": out}


def join_pieces(pieces: list[dict]) -> dict:
    """One image's result from the pieces its tiles were split into: all rows; the per-image row counts
    the whole image (as each piece does) and sums the pieces' seconds."""
    row = dict(pieces[0]["image_row"])
    for key in ("embed_seconds", "decode_seconds", "baseline_seconds"):
        row[key] = round(sum(p["image_row"][key] for p in pieces), 4)
    return {"name": pieces[0]["name"], "image_row": row, "rows": [r for p in pieces for r in p["rows"]]}


def parts_per_item(client, n_items: int, tasks_per_thread: int = 4) -> int:
    """How many tasks share each item (a volume's slices, an image's tiles): 1 when the items alone give every
    worker thread several tasks; else enough that a few large items do not leave threads idle at the end."""
    threads = sum(client.nthreads().values()) or 1
    return max(1, -(-tasks_per_thread * threads // max(n_items, 1))) if n_items < tasks_per_thread * threads else 1


def evaluate_on_cluster(cfg: EvaluateConfig, dask: DaskConfig,
                        on_case: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) an evaluation on Dask; same files and summary as `evaluation.engine.evaluate`."""
    from medsamkit.evaluation.engine import iter_dataset

    modes = parse_modes(cfg.prompts)
    store = open_store(cfg)
    n_items = len(iter_dataset(cfg))
    done = frozenset(store.done)
    new = []

    waiting: dict[str, list[dict]] = {}

    def take(result: dict) -> None:
        for piece in result["cases"]:
            waiting.setdefault(piece["name"], []).append(piece)
            if len(waiting[piece["name"]]) < piece["pieces"]:
                continue  # the image's other tiles are still running
            case = join_pieces(waiting.pop(piece["name"]))
            if not store.is_done(case["name"]):
                store.add_case(case["name"], {"per_object": case["rows"], "per_image": [case["image_row"]]})
                new.append(case["name"])
                if on_case:
                    on_case(case["image_row"])

    started = time.time()
    client = open_client(dask)
    try:
        parts = parts_per_item(client, n_items)
        tasks = [(cfg, i, done, k, parts) for i in range(n_items) for k in range(parts)]
        report = run_tasks(client, evaluate_item, tasks, take,
                           retries=dask.retries, desc="evaluate", show_progress=cfg.show_progress)
    finally:
        close_client(client)
    summary = finish(cfg, store, modes, report.interrupted, len(new))
    summary["failed"] = report.errors
    summary["cluster"] = {"start_s": round(report.submitted_at - started, 3), **report.timeline()}
    if report.interrupted:
        raise KeyboardInterrupt
    return summary
