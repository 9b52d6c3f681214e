"""The fine-tuning engine: `finetune(cfg)` trains (or resumes) a run in cfg.out.

Objects are taken per native-resolution tile exactly as the evaluate engine does; each step takes a batch
of objects of one tile (training.objective). Everything random is derived from (seed, epoch, batch), so a
run resumed from RUN/last.pt continues with exactly the step it would have taken. Under torchrun every
rank takes its own batch of each global step and the losses are averaged (DistributedDataParallel).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import medsamkit.training.distributed as distributed
from medsamkit.core.atomic import write_json_atomic
from medsamkit.core.errors import InputError
from medsamkit.core.objects import parse_classes
from medsamkit.core.results import RunStore
from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.io.datasets import Case
from medsamkit.models.finetuned import apply_recipe
from medsamkit.models.sam import SamFamilyModel
from medsamkit.predictor import Predictor, as_rgb_float, preprocess
from medsamkit.prompts import PromptMode, parse_modes
from medsamkit.training.checkpoints import (
    Checkpoints,
    TrainState,
    cut_back,
    load_start,
    log_row,
    open_store,
    read_resume,
    restore,
)
from medsamkit.training.config import FinetuneConfig, base_sha256, check_config, lr_at, recipe_of
from medsamkit.training.curves import write_curves
from medsamkit.training.data import (
    TrainTile,
    case_objects,
    class_index_function,
    class_names_for,
    epoch_batches,
    grow_validation,
    load_cases,
    plan_case_tiles,
    split_cases,
)
from medsamkit.training.objective import Objective
from medsamkit.training.validate import metric_columns, trained_clicks, validate


@dataclass
class Run:
    """A prepared run: its model and recipe, data, tiles, embedding cache and (on rank 0) results store."""

    cfg: FinetuneConfig
    modes: list[PromptMode]
    out: Path
    device: torch.device
    rank: int
    world: int
    model: SamFamilyModel
    recipe: dict
    counts: dict
    class_names: list[str]
    cases: list[Case]
    train_idx: list[int]
    val_idx: list[int]
    train_tiles: list[TrainTile]
    val_tiles: list[TrainTile]
    store: RunStore | None
    t_start: float
    cache: EmbeddingCache | None = None
    train_keys: list[str] | None = None
    embed_seconds: float = 0.0

    def say(self, text: str) -> None:
        """A progress line on stderr (rank 0, with progress shown)."""
        if self.rank == 0 and self.cfg.show_progress:
            tqdm.write(text, file=sys.stderr)

    def bar(self, **kwargs) -> tqdm:
        """A progress bar shown on rank 0 only."""
        return tqdm(disable=not self.cfg.show_progress or self.rank != 0, **kwargs)


def finetune(cfg: FinetuneConfig) -> dict:
    """Train (or resume) a fine-tuning run in cfg.out; returns the summary (also RUN/summary.json)."""
    from medsamkit.core.runtime import select_device

    check_config(cfg)
    cfg.data = [cfg.data] if isinstance(cfg.data, str) else list(cfg.data)
    modes = parse_modes(cfg.prompts)
    rank, world, device, created = distributed.start(select_device(cfg.device))
    try:
        run = prepare(cfg, modes, Path(cfg.out), device, rank, world)
        fill_cache(run)
        return train(run)
    finally:
        distributed.stop(created)


def _open_store(cfg: FinetuneConfig, out: Path, columns: list[str], rank: int, world: int) -> RunStore | None:
    """Rank 0 opens the run folder; a refusal there stops every rank with the same one-line message."""
    store, error = None, None
    if rank == 0:
        try:
            store = open_store(out, asdict(cfg), columns)
        except InputError as exc:
            error = str(exc)
    error = distributed.from_rank0(error, world)
    if error:
        raise InputError(error)
    return store


def prepare(cfg: FinetuneConfig, modes: list[PromptMode], out: Path, device: torch.device, rank: int,
            world: int) -> Run:
    """Load the data and the model, apply the recipe, plan the tiles and open the run folder."""
    from medsamkit.models.loading import load_model

    t_start = time.perf_counter()
    cases, origin, names = load_cases(cfg)
    wanted = parse_classes(cfg.classes)
    class_names = class_names_for(cases, origin, names, wanted) if cfg.class_head else []
    class_of = class_index_function(names, origin, class_names) if class_names else None

    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, cfg.checkpoint)
    recipe = recipe_of(cfg, class_names)
    counts = apply_recipe(model, recipe)
    if cfg.init_from:
        load_start(model, recipe, cfg.init_from, cfg.model)
    model.to(device).eval()  # eval throughout: the frozen encoder's BatchNorm statistics must not move

    train_idx, val_idx = split_cases(cases, origin, cfg.val_fraction, cfg.seed)
    if cfg.min_val_objects and cfg.val_fraction > 0:
        counts_of = {i: len(case_objects(cases[i], cfg, cfg.val_objects)) for i in train_idx + val_idx}
        train_idx, val_idx = grow_validation(cases, train_idx, val_idx, counts_of, cfg.min_val_objects, cfg.seed)
    size = model.preprocessing.input_size
    train_tiles = [t for i in train_idx for t in plan_case_tiles(cases[i], i, cfg, size, None, class_of)]
    val_tiles = [t for i in val_idx for t in plan_case_tiles(cases[i], i, cfg, size, cfg.val_objects, class_of)]
    if not train_tiles:
        raise InputError(f"{', '.join(cfg.data)}: no training objects of at least {cfg.min_area} px")
    store = _open_store(cfg, out, metric_columns(modes, bool(val_tiles), bool(class_names)), rank, world)
    run = Run(cfg, modes, out, device, rank, world, model, recipe, counts, class_names, cases, train_idx,
              val_idx, train_tiles, val_tiles, store, t_start)
    run.say(f"finetune {cfg.mode}: {counts['trainable']:,} trainable of {counts['total']:,} parameters")
    return run


def _tile_image(run: Run, tile: TrainTile) -> np.ndarray:
    y0, x0, y1, x1 = tile.window
    return run.cases[tile.case].image[y0:y1, x0:x1]


def fill_cache(run: Run) -> None:
    """Decoder mode (frozen encoder): embed every tile once, shared out among the ranks."""
    if run.cfg.mode != "decoder" or not run.cfg.use_cache:
        return
    cache = EmbeddingCache(run.cfg.cache or run.out / "embeddings", run.model)
    predictor = Predictor(run.model)
    mine = (run.train_tiles + run.val_tiles)[run.rank :: run.world]
    for tile in run.bar(iterable=mine, desc="embed tiles", unit="tile"):
        cache.get_or_compute(predictor, _tile_image(run, tile), run.cases[tile.case].name)
    distributed.barrier(run.world)
    run.embed_seconds = round(time.perf_counter() - run.t_start, 2)
    run.cache = cache
    run.train_keys = [cache.key(_tile_image(run, t)) for t in run.train_tiles]


def _optimizer(cfg: FinetuneConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _tile_input(run: Run, t_idx: int) -> tuple[torch.Tensor, bool, tuple[int, int]]:
    """The model's input for a training tile: cached features (decoder mode) or the preprocessed image."""
    tile = run.train_tiles[t_idx]
    if run.cache is not None:
        emb = run.cache.load(run.train_keys[t_idx]) or run.cache.get_or_compute(
            Predictor(run.model), _tile_image(run, tile))
        return emb.features.to(run.device), True, tuple(emb.input_size)
    img = as_rgb_float(_tile_image(run, tile), run.cases[tile.case].name)
    x, resized = preprocess(run.model.preprocessing, img)
    return x.to(run.device), False, tuple(resized)


class Trainer:
    """The optimisation of a prepared run: the epochs, their steps and the end-of-epoch work."""

    def __init__(self, run: Run) -> None:
        cfg = self.cfg = run.cfg
        self.run = run
        self.opt = _optimizer(cfg, run.model)
        objective: nn.Module = Objective(run.model, run.modes, run.cfg.box_anchor)
        if run.world > 1:
            objective = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
        self.objective = objective
        base = {"base_model": cfg.model, "base_checkpoint": cfg.checkpoint, "base_sha256": base_sha256(cfg),
                "config": asdict(cfg), "parameters": run.counts}
        self.checkpoints = Checkpoints(run.out, base, run.model, run.recipe, self.opt)
        self.state = TrainState()
        self.last_metrics: dict = {}
        self.t0 = time.perf_counter()  # max_seconds counts steps from here (not loading and embedding)
        self.c0 = time.process_time()  # max_cpu_seconds likewise, in this process's CPU time
        self.validation = (0.0, 0.0)  # wall and CPU seconds of validations: not steps, not in either budget
        last = run.out / "last.pt"
        resume = read_resume(last)
        if resume is not None:
            self.state = restore(resume, last, run.model, run.recipe, self.opt)
            s = self.state
            run.say(f"resuming {run.out} at epoch {s.epoch + 1}, batch {s.batch}, step {s.step}")
        if run.store is not None:
            cut_back(run.store, self.state)

    def save(self, epoch: int, batch: int, best: bool = False) -> None:
        """Checkpoint on rank 0 only."""
        if self.run.rank == 0:
            self.checkpoints.save(self.state, epoch, batch, best)

    def step(self, batches: list[tuple[int, list[int]]], b: int, usable: int) -> float:
        """Take the global step of batches b .. b + world - 1 (this rank's is b + rank); the mean loss."""
        run, cfg, state = self.run, self.cfg, self.state
        t_idx, obj_idx = batches[b + run.rank]
        tile = run.train_tiles[t_idx]
        tile_input, is_feat, resized = _tile_input(run, t_idx)
        truths = [tile.objects[j].mask_in(tile.window) for j in obj_idx]
        classes = [tile.classes[j] for j in obj_idx] if tile.classes else []
        rng = np.random.default_rng([cfg.seed, state.epoch, b + run.rank])
        try:
            loss = self.objective(tile_input, is_feat, resized, truths, classes, rng)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        except KeyboardInterrupt:  # no weight changed yet: keep the position for an exact resume
            self.save(state.epoch, b)
            raise
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg, state.epoch, b, usable)
        self.opt.step()
        self.checkpoints.clicks = None  # the validated choice was for the weights before this step
        value = float(distributed.mean_over_ranks(loss.detach(), run.world))
        state.step += 1
        state.loss_sum += value
        state.loss_n += 1
        if run.store is not None:
            log_row(run.store, "steps", {"epoch": state.epoch + 1, "step": state.step, "loss": f"{value:.8f}",
                                         "lr": f"{self.opt.param_groups[0]['lr']:.6g}"})
            if cfg.save_every and state.step % cfg.save_every == 0:
                self.save(state.epoch, b + run.world)
        return value

    def epoch(self) -> str | None:
        """The remaining steps of the current epoch; "max_steps" when the step limit stopped it."""
        run, cfg, state = self.run, self.cfg, self.state
        batches = epoch_batches(run.train_tiles, cfg, state.epoch)
        usable = len(batches) - len(batches) % run.world  # equal batch counts on every rank
        bar = run.bar(total=usable // run.world, initial=state.batch // run.world,
                      desc=f"epoch {state.epoch + 1}/{cfg.epochs}", unit="step")
        try:
            for b in range(state.batch, usable, run.world):
                if cfg.max_steps is not None and state.step >= cfg.max_steps:
                    self.save(state.epoch, b)
                    return "max_steps"
                wall, cpu = self.step_seconds()
                if cfg.max_seconds is not None and wall >= cfg.max_seconds:
                    return "max_seconds"
                if cfg.max_cpu_seconds is not None and cpu >= cfg.max_cpu_seconds:
                    return "max_seconds"
                self.step(batches, b, usable)
                bar.update(1)
                bar.set_postfix(loss=f"{state.loss_sum / state.loss_n:.4f}")
        finally:
            bar.close()
        return None

    def step_seconds(self) -> tuple[float, float]:
        """Wall and CPU seconds of this call's steps so far (validations left out)."""
        return (time.perf_counter() - self.t0 - self.validation[0], time.process_time() - self.c0 - self.validation[1])

    def end_epoch(self, final: bool = False) -> None:
        """Validation (rank 0), the epoch's metrics row, curves and checkpoints; then the next epoch.

        Epochs between validations (validate_every) only save RUN/last.pt (not even that with save_every 0:
        a run that is never resumed, the annotation server's learn job); ``final``: always validate. With
        box_floor an epoch whose validation box Dice is below the starting weights' is never the best.
        """
        run, state = self.run, self.state
        due = final or (state.epoch + 1) % self.cfg.validate_every == 0 or state.epoch + 1 >= self.cfg.epochs
        if not due:
            state.next_epoch()
            if self.cfg.save_every:
                self.save(state.epoch, 0)
            return
        row = {"epoch": state.epoch + 1, "step": state.step,
               "train_loss": round(state.loss_sum / max(state.loss_n, 1), 6)}
        if run.rank != 0:
            state.next_epoch()
            return
        score, val = self.validated(row)
        state.next_epoch()
        improved = state.improves(score, val.get("val_dice_box"))
        if improved:
            state.best_score, state.best_epoch = score, state.epoch
        self.save(state.epoch, 0, best=improved)
        run.say(f"epoch {state.epoch}: {json.dumps(row)}")

    def start_floor(self) -> None:
        """box_floor: validate the starting weights as epoch 0, the first candidate for RUN/best.pt, and
        keep their validation box Dice as the floor (once: a resumed run has it in its checkpoint)."""
        run, state = self.run, self.state
        if not self.cfg.box_floor or state.floor is not None or state.step or not run.val_tiles:
            return
        if run.rank == 0:
            run.store.keep_rows("metrics", lambda r: int(r["epoch"]) != 0)  # an interrupted start's row
            score, val = self.validated({"epoch": 0, "step": 0, "train_loss": ""})
            state.floor = float(val["val_dice_box"])
            state.best_score, state.best_epoch = score, 0
            self.save(0, 0, best=True)
            run.say(f"start: validation box Dice {state.floor:.4f} is the floor")
        state.floor = distributed.from_rank0(state.floor, run.world)

    def validated(self, row: dict) -> tuple[float, dict]:
        """Validate the current weights (rank 0), log ``row`` with the results and redraw the curves; the
        score (mean validation Dice over the modes) and the validation's numbers."""
        run = self.run
        w0, c0 = time.perf_counter(), time.process_time()
        val = validate(run.model, run.val_tiles, run.cases, run.modes, self.cfg.seed, run.cache,
                       run.class_names, trained_clicks(run.modes)) if run.val_tiles else {}
        self.validation = (self.validation[0] + time.perf_counter() - w0,
                           self.validation[1] + time.process_time() - c0)
        self.checkpoints.clicks = val.get("clicks")
        per_class = val.pop("class_accuracy", None)
        per_class_n = val.pop("class_objects", None)
        row.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in val.items()})
        row["seconds"] = round(time.perf_counter() - run.t_start, 2)
        dices = [v for k, v in val.items() if k.startswith("val_dice_") and not math.isnan(v)]
        score = float(np.mean(dices)) if dices else -row["train_loss"]
        log_row(run.store, "metrics", row)
        write_curves(run.store.path("metrics"), run.out / "curves.png")
        self.last_metrics = dict(row)
        if per_class is not None:
            self.last_metrics.update(class_accuracy=per_class, class_objects=per_class_n)
        return score, val


def train(run: Run) -> dict:
    """Run the remaining epochs of a prepared run; write and return its summary."""
    trainer = Trainer(run)
    trainer.start_floor()
    stopped, timing = None, {}  # timing: the steps of this call (a resumed run counts from its resumption)
    while trainer.state.epoch < run.cfg.epochs and stopped is None:
        stopped = trainer.epoch()
        if stopped in (None, "max_seconds"):  # a time-stopped epoch is validated as the last one
            trainer.end_epoch(final=stopped is not None)
            distributed.barrier(run.world)
        wall, cpu = trainer.step_seconds()
        timing = {"train_seconds": round(wall, 2), "train_cpu_seconds": round(cpu, 2),
                  "validate_seconds": round(trainer.validation[0], 2),
                  "validate_cpu_seconds": round(trainer.validation[1], 2)}
    summary = summarize(run, trainer.state, stopped, trainer.last_metrics)
    summary.update(timing)
    if run.rank == 0:
        write_json_atomic(run.out / "summary.json", summary)
    return summary


def summarize(run: Run, state: TrainState, stopped: str | None, last_metrics: dict) -> dict:
    """The run's summary: data, tiles, position, best epoch, last metrics, timings, cache use."""
    cache = run.cache
    return {"out": str(run.out), "mode": run.cfg.mode, "base_model": run.cfg.model, "parameters": run.counts,
            "train_images": len(run.train_idx), "val_images": len(run.val_idx),
            "val_sources": sorted({run.cases[i].source for i in run.val_idx}),
            "train_objects": sum(len(t.objects) for t in run.train_tiles), "train_tiles": len(run.train_tiles),
            "val_objects": sum(len(t.objects) for t in run.val_tiles), "epochs_done": state.epoch,
            "steps": state.step, "stopped": stopped, "best_epoch": state.best_epoch,
            "best_score": state.best_score, "classes": run.class_names, "last": last_metrics,
            "seconds": round(time.perf_counter() - run.t_start, 2), "embed_seconds": run.embed_seconds,
            "cache": None if cache is None else {"folder": str(cache.folder), **cache.stats}}
