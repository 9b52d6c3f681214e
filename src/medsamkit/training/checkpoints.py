"""A fine-tuning run folder: its identity and logs (through the one RunStore), and its checkpoints.

RUN/last.pt holds everything a resumed run needs to take exactly the step it would have taken (weights,
optimizer, torch RNG, position, running loss, best score); RUN/best.pt the same at the best epoch. Both
are loadable models (models.loading.load_finetuned). The step and epoch logs are cut back to the
checkpoint's position on resume, so they never hold steps that are computed again.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medsamkit.core.atomic import save_torch_atomic
from medsamkit.core.errors import InputError
from medsamkit.core.results import RunStore
from medsamkit.models.finetuned import CHECKPOINT_FORMAT, finetuned_state, read_run_checkpoint
from medsamkit.training.config import resume_differences

STEP_COLUMNS = ["epoch", "step", "loss", "lr"]


@dataclass
class TrainState:
    """Where a run stands: completed epochs, the next batch of the current epoch, steps taken, the running
    loss of the epoch, the best score so far and (box_floor) the starting weights' validation box Dice."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    floor: float | None = None

    def improves(self, score: float, box_dice: float | None) -> bool:
        """Whether a validated epoch becomes the best: a higher score, and with a floor a validation box Dice
        at least the floor's."""
        allowed = self.floor is None or (box_dice is not None and box_dice >= self.floor)
        return allowed and score > self.best_score

    def next_epoch(self) -> None:
        """Count a finished epoch and start the next one's running loss."""
        self.epoch += 1
        self.loss_sum, self.loss_n, self.batch = 0.0, 0, 0


def csv_header(path: Path) -> list[str] | None:
    """The columns of an existing CSV file (None when there is none): a run begun by an older version
    resumes with the columns it started with."""
    if not path.exists():
        return None
    with path.open(newline="") as fh:
        return next(csv.reader(fh), None)


def open_store(out: Path, identity: dict, metric_columns: list[str]) -> RunStore:
    """The run folder: refuses one holding another configuration (the resume rule of training.config)."""
    tables = {"steps": csv_header(out / "steps.csv") or STEP_COLUMNS,
              "metrics": csv_header(out / "metrics.csv") or metric_columns}
    return RunStore(out, identity, tables, differences=resume_differences, step_tables=("steps", "metrics"))


def log_row(store: RunStore, table: str, row: dict) -> None:
    """Append one row, keeping only the table's columns (an older run's table may have fewer)."""
    store.append(table, [{k: v for k, v in row.items() if k in store.tables[table]}])


def cut_back(store: RunStore, state: TrainState) -> None:
    """Drop logged steps after the checkpoint's step and epochs it has not completed."""
    store.keep_rows("steps", lambda r: int(r["step"]) <= state.step)
    store.keep_rows("metrics", lambda r: int(r["epoch"]) <= state.epoch)


def read_resume(path: Path) -> dict | None:
    """The saved RUN/last.pt (on the CPU), or None for a new run."""
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def restore(resume: dict, path: Path, model: torch.nn.Module, recipe: dict,
            optimizer: torch.optim.Optimizer) -> TrainState:
    """Load a saved run's weights, optimizer and torch RNG; return its position."""
    if set(resume["model"]) != set(finetuned_state(model, recipe)):
        raise InputError(f"{path}: saved weights do not match the run's recipe; use another --out folder")
    model.load_state_dict(resume["model"], strict=False)
    optimizer.load_state_dict(resume["optimizer"])
    torch.set_rng_state(resume["rng"]["torch"])
    return TrainState(resume["epoch"], resume["batch"], resume["step"], resume["loss_sum"], resume["loss_n"],
                      resume["best_score"], resume["best_epoch"], resume.get("box_floor"))


def load_start(model: torch.nn.Module, recipe: dict, path: str | Path, base_model: str) -> str:
    """Start a run from another run's fine-tuned weights (same base model and recipe); returns its file."""
    ckpt = read_run_checkpoint(path)
    if ckpt.get("base_model") != base_model or ckpt["recipe"].get("mode") != recipe["mode"]:
        raise InputError(f"{ckpt['path']}: fine-tuned from {ckpt.get('base_model')} in "
                         f"{ckpt['recipe'].get('mode')} mode; this run is {base_model} in {recipe['mode']} mode")
    if set(ckpt["model"]) != set(finetuned_state(model, recipe)):
        raise InputError(f"{ckpt['path']}: its weights do not match this run's recipe")
    model.load_state_dict(ckpt["model"], strict=False)
    return ckpt["path"]


class Checkpoints:
    """Writes RUN/last.pt and RUN/best.pt: the fine-tuned weights, their recipe and the run's state."""

    def __init__(self, out: Path, base: dict[str, Any], model: torch.nn.Module, recipe: dict,
                 optimizer: torch.optim.Optimizer) -> None:
        self.out = out
        self.base = base  # base_model, base_checkpoint, base_sha256, config, parameters
        self.model = model
        self.recipe = recipe
        self.optimizer = optimizer
        # the click strategy validation chose for the current weights (None once a step changed them)
        self.clicks: str | None = None

    def contents(self, state: TrainState, epoch: int, batch: int) -> dict:
        """The checkpoint of ``state`` positioned at batch ``batch`` of epoch ``epoch``."""
        return {"format": CHECKPOINT_FORMAT, **self.base, "recipe": self.recipe,
                "model": finetuned_state(self.model, self.recipe), "optimizer": self.optimizer.state_dict(),
                "rng": {"torch": torch.get_rng_state()}, "epoch": epoch, "batch": batch, "step": state.step,
                "loss_sum": state.loss_sum, "loss_n": state.loss_n, "best_score": state.best_score,
                "best_epoch": state.best_epoch, **({"clicks": self.clicks} if self.clicks else {}),
                **({"box_floor": state.floor} if state.floor is not None else {})}

    def save(self, state: TrainState, epoch: int, batch: int, best: bool = False) -> None:
        """Write RUN/last.pt (and RUN/best.pt when ``best``) atomically."""
        ckpt = self.contents(state, epoch, batch)
        save_torch_atomic(ckpt, self.out / "last.pt")
        if best:
            save_torch_atomic(ckpt, self.out / "best.pt")
