"""The settings of a fine-tuning run: FinetuneConfig, its checks, the recipe it stores, the learning-rate
schedule and the rule deciding which settings a resumed run may change."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from medsamkit.core.errors import InputError
from medsamkit.core.prompt_modes import parse_modes

MODES = ("decoder", "adapter", "lora")
SCHEDULES = ("constant", "cosine")
# options that may change between a run and its resumption (they do not change what a step computes)
RESUMABLE_CHANGES = {"epochs", "max_steps", "save_every", "show_progress", "device", "cache", "max_seconds",
                     "validate_every", "max_cpu_seconds", "use_cache"}


@dataclass
class FinetuneConfig:
    """Everything `medsamkit finetune` needs; the CLI only fills this in."""

    data: list[str]
    out: str
    mode: str = "decoder"
    prompts: str = "box,jitter+5,center,random1,iter3"
    class_head: bool = False  # add a class head (class label values, or one class per --data)
    classes: str | None = None  # label values to train on (comma list); None: all
    window: str | None = None  # CT/MR intensity window of volume SPECs (a name or lo,hi)
    epochs: int = 10
    lr: float = 1e-4
    lr_schedule: str = "constant"  # or "cosine": from lr down to lr * min_lr_ratio over all epochs
    min_lr_ratio: float = 0.01
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    momentum: float = 0.9  # SGD only
    batch_size: int = 16  # objects per step, all from one tile
    val_fraction: float = 0.2
    seed: int = 0
    # weight of an extra tight-box loss on every object of a step, beside its drawn mode: keeps box answers
    # where they were while clicks are learnt from few objects (the annotator's learn rounds); 0: off
    box_anchor: float = 0.0
    # validate the starting weights too (epoch 0, a candidate for best.pt) and let a later epoch be best only
    # when its validation box Dice is at least epoch 0's: the run never returns box answers validated worse
    # than the model it started from (needs the `box` prompt mode and a validation split)
    box_floor: bool = False
    cache: str | None = None  # embedding cache folder (decoder mode); default RUN/embeddings
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    max_images: int | None = None  # per dataset
    max_objects: int | None = None  # per training image and epoch, drawn anew each epoch
    val_objects: int | None = 32  # per validation image, fixed
    # validation holds at least this many objects where the images allow: whole images move from training to
    # validation while training keeps at least half of the objects (0: the --val-fraction split alone)
    min_val_objects: int = 0
    max_steps: int | None = None  # stop after this many steps in total (a later call with more resumes)
    save_every: int = 50  # steps between RUN/last.pt saves inside an epoch
    min_area: int = 20
    tile_size: int | None = None  # None: the evaluate engine's rule
    tile_overlap: int = 64  # the tile grid's overlap: the value `embed --tile-overlap` used for the cache
    adapter_bottleneck: int = 32
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lora_targets: str = "qkv"
    train_decoder: bool = False  # adapter/lora: also train the prompt encoder and mask decoder
    show_progress: bool = True
    # stop training after this many seconds of steps (validations not counted); the epoch in progress is
    # then validated and saved
    max_seconds: float | None = None
    # the same in CPU seconds of this process (time.process_time): a budget that other jobs on the machine
    # do not shrink, for comparing runs on a shared machine
    max_cpu_seconds: float | None = None
    # decoder mode: embed every tile once into the cache; False: encode each step's tile (no autograd), cheaper
    # when a run sees each tile about once
    use_cache: bool = True
    validate_every: int = 1  # epochs between validations (the last and a time-stopped epoch always are)
    init_from: str | None = None  # start from this fine-tuning checkpoint's weights (same base model, mode)


def check_config(cfg: FinetuneConfig) -> None:
    """InputError naming the flag when a setting is out of range."""
    if cfg.mode not in MODES:
        raise InputError(f"unknown --mode {cfg.mode!r}; choose one of: {', '.join(MODES)}")
    if not cfg.box_anchor >= 0:
        raise InputError(f"box_anchor must be >= 0, got {cfg.box_anchor}")
    if cfg.box_floor and (all(m.name != "box" for m in parse_modes(cfg.prompts)) or cfg.val_fraction <= 0):
        raise InputError("--box-floor needs `box` among --prompts and a validation split (--val-fraction > 0)")
    if cfg.optimizer not in ("adamw", "sgd"):
        raise InputError(f"unknown --optimizer {cfg.optimizer!r}; choose adamw or sgd")
    if cfg.lr_schedule not in SCHEDULES:
        raise InputError(f"unknown --lr-schedule {cfg.lr_schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise InputError(f"--min-lr-ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise InputError("--epochs, --batch-size and --lr must be positive")
    if cfg.validate_every < 1 or any(v is not None and v < 0 for v in (cfg.max_seconds, cfg.max_cpu_seconds)):
        raise InputError("validate_every must be >= 1, max_seconds and max_cpu_seconds >= 0")
    if cfg.tile_overlap < 0:
        raise InputError(f"--tile-overlap must be >= 0, got {cfg.tile_overlap}")
    if cfg.model.endswith((".pt", ".pth")) or Path(cfg.model).is_dir():
        raise InputError(f"{cfg.model}: fine-tune a registry model (continue a run with the same --out instead)")


def recipe_of(cfg: FinetuneConfig, class_names: list[str]) -> dict:
    """The plain-dict recipe stored in checkpoints and re-applied by models.finetuned.load_finetuned."""
    return {"mode": cfg.mode, "adapter_bottleneck": cfg.adapter_bottleneck, "lora_rank": cfg.lora_rank,
            "lora_alpha": cfg.lora_alpha, "lora_targets": [t.strip() for t in cfg.lora_targets.split(",") if t.strip()],
            "train_decoder": cfg.train_decoder, "classes": list(class_names)}


def base_sha256(cfg: FinetuneConfig) -> str:
    """sha256 of the base weights: the registry's pinned value for bundled weights, else the file's."""
    from medsamkit.models.checkpoints import sha256_of
    from medsamkit.models.registry import get_spec

    if cfg.checkpoint:
        return sha256_of(cfg.checkpoint)
    return get_spec(cfg.model).sha256 or ""


def lr_at(cfg: FinetuneConfig, epoch: int, batch: int, n_batches: int) -> float:
    """The learning rate of the step taking batch `batch` of `n_batches` in epoch `epoch` (0-based).

    A function of the position alone (no scheduler state), so a resumed run continues on the same curve.
    """
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (epoch + batch / max(n_batches, 1)) / cfg.epochs)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def _current_names(old: dict) -> dict:
    """A saved config in today's field names: before `class_head`, `classes` was the class-head flag."""
    if isinstance(old.get("classes"), bool):
        return {**old, "class_head": old["classes"], "classes": None}
    return old


def resume_differences(old: dict, new: dict) -> list[str]:
    """Settings that differ between a saved run's config and this one and would change what a step computes.

    Settings missing from an older run's config count as their defaults; with a cosine schedule --epochs
    sets the curve, so it must stay as well.
    """
    old = _current_names(old)
    defaults = {f.name: f.default for f in fields(FinetuneConfig)}
    free = RESUMABLE_CHANGES - ({"epochs"} if new.get("lr_schedule", "constant") != "constant" else set())
    return [k for k in new if k not in free and old.get(k, defaults.get(k)) != new[k]]
