"""`medsamkit evaluate` as a batch run (``core.batch``): one task per image or volume, here or on Dask.

A task computes the rows of its item's not-yet-done 2D cases (``engine.evaluate_case``) and writes their
masks; the driver alone appends rows to the run's store, so a run on Dask gives the rows of a local one
(order aside) and the same summary. With few items on a cluster, an item is spread over several tasks: a
volume's labelled slices, or an image's tiles, which the driver joins back into one image's rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from medsamkit.core.batch import Executor, Task, run_batch
from medsamkit.core.errors import InputError
from medsamkit.core.prompt_modes import PromptMode
from medsamkit.core.results import RunStore
from medsamkit.embedding.resources import LocalResources, Resources
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.engine import evaluate_case, iter_dataset, mask_path, open_store
from medsamkit.evaluation.report import write_reports
from medsamkit.io.datasets import VolumeCase
from medsamkit.io.images import write_mask
from medsamkit.predictor import Predictor
from medsamkit.prompts import parse_modes


def evaluate_item(res: Resources, cfg: EvaluateConfig, index: int, done: frozenset[str], part: int = 0,
                  parts: int = 1) -> Iterator[dict]:
    """Task: part ``part`` of ``parts`` of dataset item ``index``'s not-yet-done 2D cases, one result per case:
    of a volume every ``parts``-th labelled slice (whole), of an image every ``parts``-th tile of its plan (a
    piece the driver joins with the others; an image whose masks are kept is not split: part 0 does it)."""
    item = res.item(cfg.data, cfg.window, None, index)
    modes = parse_modes(cfg.prompts)
    if isinstance(item, VolumeCase):
        todo = [(c, (0, 1)) for k, c in enumerate(item.slices()) if k % parts == part]
    elif cfg.save_masks or cfg.figures:
        todo = [(item, (0, 1))] if part == 0 else []
    else:
        todo = [(item, (part, parts))]
    for case, piece in todo:
        if case.name in done:
            continue
        predictor = res.predictor(cfg.model, cfg.checkpoint, cfg.device, cfg.batch_size)
        image_row, rows, saved = evaluate_case(case, predictor, modes, cfg, res.cache(cfg.cache, predictor), piece)
        for mode_name, lab in saved.items():
            write_mask(mask_path(Path(cfg.out), mode_name, case.name), lab)
        yield {"name": case.name, "image_row": image_row, "rows": rows, "pieces": piece[1]}


def join_pieces(pieces: list[dict]) -> dict:
    """One image's result from the pieces its tiles were split into: all rows; the per-image row counts
    the whole image (as each piece does) and sums the pieces' seconds."""
    row = dict(pieces[0]["image_row"])
    for key in ("embed_seconds", "decode_seconds", "baseline_seconds"):
        row[key] = round(sum(p["image_row"][key] for p in pieces), 4)
    return {"name": pieces[0]["name"], "image_row": row, "rows": [r for p in pieces for r in p["rows"]]}


def parts_per_item(n_items: int, slots: int, tasks_per_slot: int = 4) -> int:
    """How many tasks share each item (a volume's slices, an image's tiles): 1 when the items alone give every
    task slot several tasks; else enough that a few large items do not leave slots idle at the end."""
    wanted = tasks_per_slot * max(slots, 1)
    return max(1, -(-wanted // max(n_items, 1))) if n_items < wanted else 1


def finish(cfg: EvaluateConfig, store: RunStore, modes: list[PromptMode], interrupted: bool, n_new: int) -> dict:
    """Summary and figures of what the store holds (a valid report after Ctrl-C too)."""
    out = Path(cfg.out)
    if not store.done:
        raise InputError(f"{cfg.data}: no image with objects was evaluated")
    summary = write_reports(out, modes, cfg, lambda mode, case: mask_path(out, mode, case))
    summary["interrupted"] = interrupted
    summary["new_images"] = n_new
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


class EvaluateJob:
    """An evaluation folder as a batch job (``core.batch.BatchJob``)."""

    desc, unit = "evaluate", "case"

    def __init__(self, cfg: EvaluateConfig, predictor: Predictor | None = None,
                 on_image: Callable[[dict], None] | None = None) -> None:
        self.cfg, self.on_image = cfg, on_image
        self.show_progress = cfg.show_progress
        self.modes = parse_modes(cfg.prompts)
        self.store = open_store(cfg)  # refuses a folder of another configuration before anything runs
        dataset = iter_dataset(cfg)
        self.n_items = len(dataset)
        self.resources = LocalResources(predictor, {(cfg.data, cfg.window, None): dataset})
        self.waiting: dict[str, list[dict]] = {}
        self.n_new = 0

    def tasks(self, slots: int | None) -> list[Task]:  # noqa: D102
        parts = 1 if slots is None else parts_per_item(self.n_items, slots)
        done = frozenset(self.store.done)
        return [Task(evaluate_item, (self.cfg, i, done, k, parts)) for i in range(self.n_items) for k in range(parts)]

    def take(self, result: dict) -> None:  # noqa: D102
        name = result["name"]
        self.waiting.setdefault(name, []).append(result)
        if len(self.waiting[name]) < result["pieces"]:
            return  # the image's other tiles are still running
        case = join_pieces(self.waiting.pop(name))
        if self.store.is_done(name):
            return
        self.store.add_case(name, {"per_object": case["rows"], "per_image": [case["image_row"]]})
        self.n_new += 1
        if self.on_image:
            self.on_image(case["image_row"])

    def finish(self, interrupted: bool) -> dict:  # noqa: D102
        return finish(self.cfg, self.store, self.modes, interrupted, self.n_new)

    def has_results(self) -> bool:  # noqa: D102
        return bool(self.store.done)


def evaluate(cfg: EvaluateConfig, predictor: Predictor | None = None,
             on_image: Callable[[dict], None] | None = None, executor: Executor | None = None) -> dict:
    """Run (or resume) an evaluation here (or with ``executor``, e.g. on Dask); writes CSVs, summary.json/.md
    and figures under cfg.out and returns the summary. A finished run loads no model: it rewrites its report."""
    return run_batch(EvaluateJob(cfg, predictor, on_image), executor)
