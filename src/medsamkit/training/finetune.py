"""Fine-tuning with simulated prompts: decoder only (cached embeddings), encoder adapters or LoRA, class head.

Objects are taken per native-resolution tile exactly as the evaluate engine does. Each step takes a batch
of objects of one tile; every object draws a prompt mode, and iterative modes first simulate corrective
clicks with the model's own detached predictions, feeding the previous low-res logits back as the mask
prompt (SAM-Med2D style). The loss (BCE + Dice on the single-mask output and on the best of the three
multimask outputs, + MSE of the predicted IoU, + cross-entropy of the class head) trains the outputs both
`multimask` settings of the predictor use. Everything random is derived from (seed, epoch, batch), so a
run resumed from RUN/last.pt continues with exactly the step it would have taken.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from medsamkit.core.errors import InputError
from medsamkit.core.objects import ImageObject, extract_objects
from medsamkit.core.tiling import tile_size_for
from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.evaluation.engine import plan_tiles, run_mode_model
from medsamkit.io.datasets import Case, open_dataset
from medsamkit.metrics import dice
from medsamkit.models.finetuned import (
    CHECKPOINT_FORMAT,
    ClassHeadMaskDecoder,
    apply_recipe,
    finetuned_state,
)
from medsamkit.models.sam import SamFamilyModel, fast_decoder_supported, fast_mask_decode
from medsamkit.predictor import Predictor, as_rgb_float, preprocess
from medsamkit.prompts import Prompt, PromptMode, initial_prompt, next_click, parse_modes, stack_prompts

Window = tuple[int, int, int, int]
MODES = ("decoder", "adapter", "lora")
# options that may change between a run and its resumption (they do not change what a step computes)
RESUMABLE_CHANGES = {"epochs", "max_steps", "save_every", "show_progress", "device", "cache"}


@dataclass
class FinetuneConfig:
    """Everything `medsamkit finetune` needs; the CLI only fills this in."""

    data: list[str]
    out: str
    mode: str = "decoder"
    prompts: str = "box,jitter+5,center,random1,iter3"
    classes: bool = False
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
    cache: str | None = None  # embedding cache folder (decoder mode); default RUN/embeddings
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    max_images: int | None = None  # per dataset
    max_objects: int | None = None  # per training image and epoch, drawn anew each epoch
    val_objects: int | None = 32  # per validation image, fixed
    max_steps: int | None = None  # stop after this many steps in total (a later call with more resumes)
    save_every: int = 50  # steps between RUN/last.pt saves inside an epoch
    min_area: int = 20
    tile_size: int | None = None  # None: the evaluate engine's rule
    tile_overlap: int = 64
    adapter_bottleneck: int = 32
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lora_targets: str = "qkv"
    train_decoder: bool = False  # adapter/lora: also train the prompt encoder and mask decoder
    show_progress: bool = True


@dataclass
class TrainTile:
    """A tile of one image with the objects assigned to it (and their class indices)."""

    case: int
    window: Window
    objects: list[ImageObject]
    classes: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# data


def _case_key(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF  # the evaluate engine's key: same validation prompts


def load_cases(cfg: FinetuneConfig) -> tuple[list[Case], list[int], list[str]]:
    """All 2D cases of all --data sets, the dataset index of each, and the dataset names."""
    specs = [cfg.data] if isinstance(cfg.data, str) else list(cfg.data)
    if not specs:
        raise InputError("no --data given")
    cases, origin, names = [], [], []
    for i, spec in enumerate(specs):
        ds = open_dataset(spec)
        if len(ds) == 0:
            raise InputError(f"{spec}: empty dataset")
        names.append(ds.name if ds.name not in names else str(spec))
        for case in ds.cases(cfg.max_images):
            if len(specs) > 1:
                case.name = f"{names[-1]}/{case.name}"
            cases.append(case)
            origin.append(i)
    return cases, origin, names


def class_names_for(cases: list[Case], origin: list[int], names: list[str]) -> list[str]:
    """Class names for the head: one per dataset with several --data, else the values of class label maps."""
    if len(names) > 1:
        return list(names)
    if all(c.kind == "class" for c in cases):
        values = sorted({int(v) for c in cases for v in np.unique(c.label) if v > 0})
        if len(values) >= 2:
            return [str(v) for v in values]
    raise InputError(
        f"{names[0]}: --classes needs a class label map with at least two classes, or several --data sets"
    )


def split_by_image(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/validation split of image indices; at least one of each when n >= 2 and fraction > 0."""
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    elif n < 2:
        n_val = 0
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def source_of(case: Case) -> str:
    """The image or patient volume a case comes from: the unit that train/validation splits keep whole."""
    return str(case.meta.get("volume", case.name))


def split_cases(cases: list[Case], origin: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train/validation case indices, split within each --data set by image, and by volume for slices:
    all slices of one patient volume land on the same side, so validation never sees a training patient
    (a set holding a single volume falls back to splitting its slices)."""
    train: list[int] = []
    val: list[int] = []
    for k in sorted(set(origin)):
        members = [i for i, o in enumerate(origin) if o == k]
        group_of = {i: source_of(cases[i]) for i in members}
        groups = list(dict.fromkeys(group_of[i] for i in members))
        if len(groups) < 2:
            group_of = {i: cases[i].name for i in members}
            groups = [cases[i].name for i in members]
        _, held = split_by_image(len(groups), fraction, seed + k)
        held_out = {groups[g] for g in held}
        for i in members:
            (val if group_of[i] in held_out else train).append(i)
    return sorted(train), sorted(val)


def plan_case_tiles(case: Case, index: int, cfg: FinetuneConfig, input_size: int, limit: int | None = None,
                    class_of=None) -> list[TrainTile]:
    """The evaluate engine's tiles for one image (objects limited to `limit`, chosen with the seed)."""
    objs = list(extract_objects(case.label, case.kind, cfg.min_area))
    if limit is not None and len(objs) > limit:
        pick = np.sort(np.random.default_rng([cfg.seed, _case_key(case.name)]).choice(len(objs), limit, replace=False))
        objs = [objs[i] for i in pick]
    if not objs:
        return []
    shape = case.label.shape[:2]
    tile = tile_size_for(shape, cfg.tile_size, input_size)
    tiles = []
    for window, members in plan_tiles(objs, shape, tile, cfg.tile_overlap).items():
        classes = [class_of(index, o) for o in members] if class_of else []
        tiles.append(TrainTile(index, window, members, classes))
    return tiles


def epoch_batches(tiles: list[TrainTile], cfg: FinetuneConfig, epoch: int) -> list[tuple[int, list[int]]]:
    """(tile index, object indices) batches of one epoch, in a seeded order; objects of one tile per batch.

    With max_objects, each image contributes that many objects taken tile by tile (tiles in a new random
    order each epoch), so batches stay full and one cached embedding serves a whole batch.
    """
    rng = np.random.default_rng([cfg.seed, 11, epoch])
    order = {t: [int(j) for j in rng.permutation(len(tile.objects))] for t, tile in enumerate(tiles)}
    if cfg.max_objects is not None:
        by_case: dict[int, list[int]] = {}
        for t, tile in enumerate(tiles):
            by_case.setdefault(tile.case, []).append(t)
        for case_tiles in by_case.values():
            left = cfg.max_objects
            for k in rng.permutation(len(case_tiles)):
                t = case_tiles[int(k)]
                order[t], left = order[t][:left], left - min(left, len(order[t]))
    batches = []
    for t in rng.permutation(len(tiles)):
        objs = order[int(t)]
        batches += [(int(t), objs[i : i + cfg.batch_size]) for i in range(0, len(objs), cfg.batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]


# ---------------------------------------------------------------------------------------------------------
# model calls


def decode_all(model: SamFamilyModel, features: torch.Tensor, points, boxes, masks
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """All four mask outputs (P,4,m,m) (0: single-mask, 1-3: multimask), IoU (P,4), class logits or None.

    A plain official decoder runs re-associated (fast_mask_decode), with or without autograd: the same
    outputs and gradients (to float rounding) at about a third of the time of predict_masks.
    """
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
    pe = model.prompt_encoder.get_dense_pe()
    dec = model.mask_decoder
    if isinstance(dec, ClassHeadMaskDecoder):
        return dec.predict_all(features, pe, sparse, dense)
    if model.use_fast_decoder and features.shape[0] == 1 and fast_decoder_supported(dec):
        low, iou = fast_mask_decode(dec, features, pe, sparse, dense if masks is not None else dense[:1], None)
        return low, iou, None
    low, iou = dec.predict_masks(image_embeddings=features, image_pe=pe, sparse_prompt_embeddings=sparse,
                                 dense_prompt_embeddings=dense)
    return low, iou, None


def to_tile(low: torch.Tensor, input_size: int, resized: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Low-res logits (P,C,m,m) -> logits on the tile (P,C,H,W), as Predictor.postprocess but unthresholded."""
    x = low
    if x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    if tuple(x.shape[-2:]) != tuple(shape):
        x = F.interpolate(x, size=tuple(shape), mode="bilinear", align_corners=False)
    return x


def prompt_tensors(prompts: list[Prompt], scale: np.ndarray, device: torch.device):
    """Points (padded with label -1, as the evaluate engine does) and boxes in the model-input frame."""
    arrays = stack_prompts(prompts)
    boxes = None
    if "boxes" in arrays:
        boxes = torch.from_numpy(arrays["boxes"] * np.tile(scale, 2)).to(device)
    points = None
    if "points" in arrays:
        points = (torch.from_numpy(arrays["points"] * scale).to(device),
                  torch.from_numpy(arrays["point_labels"]).to(device))
    return points, boxes


def segmentation_losses(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice per object and mask: logits (P,C,H,W), truth (P,1,H,W) float -> (P,C)."""
    target = truth.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((2, 3))
    prob = logits.sigmoid()
    inter = (prob * target).sum((2, 3))
    soft_dice = (2 * inter + 1) / (prob.sum((2, 3)) + target.sum((2, 3)) + 1)
    return bce + (1 - soft_dice)


class Objective(nn.Module):
    """One step's loss for a batch of objects of one tile (a module so DDP can wrap it)."""

    def __init__(self, model: SamFamilyModel, modes: list[PromptMode]) -> None:
        super().__init__()
        self.model = model
        self.modes = modes

    def forward(self, tile_input: torch.Tensor, is_features: bool, resized: tuple[int, int],
                truths: list[np.ndarray], classes: list[int], rng: np.random.Generator) -> torch.Tensor:
        model = self.model
        dev = tile_input.device
        feats = tile_input if is_features else model.encode(tile_input)
        shape = truths[0].shape
        scale = np.array([resized[1] / shape[1], resized[0] / shape[0]], dtype=np.float32)
        s = model.preprocessing.input_size
        mode_idx = rng.integers(len(self.modes), size=len(truths))
        total = feats.new_zeros(())
        for mi in sorted(set(mode_idx.tolist())):
            idx = np.flatnonzero(mode_idx == mi)
            mode = self.modes[mi]
            prompts = [initial_prompt(mode, truths[i], rng, shape) for i in idx]
            mask_in = None
            n_pre = int(rng.integers(mode.n_steps)) if mode.n_steps > 1 else 0  # clicks simulated before
            for _ in range(n_pre):
                with torch.no_grad():
                    pts, bxs = prompt_tensors(prompts, scale, dev)
                    low, _, _ = decode_all(model, feats.detach(), pts, bxs, mask_in)
                    mask_in = low[:, :1].detach()  # the single-mask output, as evaluate (multimask off)
                    pred = (to_tile(mask_in, s, resized, shape)[:, 0] > 0).cpu().numpy()
                for j, i in enumerate(idx):
                    click = next_click(pred[j], truths[i], rng)
                    if click is not None:
                        prompts[j] = prompts[j].with_click(*click)
            pts, bxs = prompt_tensors(prompts, scale, dev)
            low, iou_pred, class_logits = decode_all(model, feats, pts, bxs, mask_in)
            logits = to_tile(low, s, resized, shape)
            truth = torch.from_numpy(np.stack([truths[i] for i in idx])[:, None]).to(dev, logits.dtype)
            seg = segmentation_losses(logits, truth)
            with torch.no_grad():
                hard = logits > 0
                inter = (hard & (truth > 0)).sum((2, 3)).float()
                union = (hard | (truth > 0)).sum((2, 3)).float().clamp(min=1)
                actual_iou = inter / union
            per_object = seg[:, 0] + seg[:, 1:].min(dim=1).values + ((iou_pred - actual_iou) ** 2).mean(1)
            if class_logits is not None:
                target = torch.tensor([classes[i] for i in idx], device=dev)
                per_object = per_object + F.cross_entropy(class_logits, target, reduction="none")
            total = total + per_object.sum()
        return total / len(truths)


# ---------------------------------------------------------------------------------------------------------
# run state, checkpoints, reports


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _truncate_csv(path: Path, keep) -> None:
    if not path.exists():
        return
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, [r for r in reader if keep(r)]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fields or [])
        w.writeheader()
        w.writerows(rows)


def _append_csv(path: Path, row: dict) -> None:
    """Append a row; an existing file keeps its columns (a run begun by an older version resumes cleanly)."""
    header = None
    if path.exists():
        with path.open(newline="") as fh:
            header = next(csv.reader(fh), None)
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, header or list(row), extrasaction="ignore")
        if not header:
            w.writeheader()
        w.writerow(row)


def write_curves(metrics_csv: Path, out_png: Path) -> None:
    """Train loss and validation Dice per prompt mode against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with metrics_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o")
    ax1.set(xlabel="epoch", ylabel="train loss", title="training loss")
    for key in rows[0]:
        if key.startswith("val_dice_") or key == "val_class_accuracy":
            vals = [float(r[key]) if r[key] not in ("", "nan") else math.nan for r in rows]
            ax2.plot(epochs, vals, marker="o", label=key.removeprefix("val_dice_"))
    ax2.set(xlabel="epoch", ylabel="validation Dice", title="validation", ylim=(0, 1))
    if ax2.lines:
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no validation images", ha="center", transform=ax2.transAxes)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def base_sha256(cfg: FinetuneConfig) -> str:
    """sha256 of the base weights: the registry's pinned value for bundled weights, else the file's."""
    from medsamkit.models.checkpoints import sha256_of
    from medsamkit.models.registry import get_spec

    if cfg.checkpoint:
        return sha256_of(cfg.checkpoint)
    return get_spec(cfg.model).sha256 or ""


def recipe_of(cfg: FinetuneConfig, class_names: list[str]) -> dict:
    """The plain-dict recipe stored in checkpoints and re-applied by models.finetuned.load_finetuned."""
    return {"mode": cfg.mode, "adapter_bottleneck": cfg.adapter_bottleneck, "lora_rank": cfg.lora_rank,
            "lora_alpha": cfg.lora_alpha, "lora_targets": [t.strip() for t in cfg.lora_targets.split(",") if t.strip()],
            "train_decoder": cfg.train_decoder, "classes": list(class_names)}


SCHEDULES = ("constant", "cosine")


def lr_at(cfg: FinetuneConfig, epoch: int, batch: int, n_batches: int) -> float:
    """The learning rate of the step taking batch `batch` of `n_batches` in epoch `epoch` (0-based).

    A function of the position alone (no scheduler state), so a resumed run continues on the same curve.
    """
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (epoch + batch / max(n_batches, 1)) / cfg.epochs)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def resume_differences(old: dict, new: dict) -> list[str]:
    """Settings that differ between a saved run's config and this one and would change what a step computes.

    Settings missing from an older run's config count as their defaults; with a cosine schedule --epochs
    sets the curve, so it must stay as well.
    """
    defaults = {f.name: f.default for f in fields(FinetuneConfig)}
    free = RESUMABLE_CHANGES - ({"epochs"} if new.get("lr_schedule", "constant") != "constant" else set())
    return [k for k in new if k not in free and old.get(k, defaults.get(k)) != new[k]]


def _check_config(cfg: FinetuneConfig) -> None:
    if cfg.mode not in MODES:
        raise InputError(f"unknown --mode {cfg.mode!r}; choose one of: {', '.join(MODES)}")
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
    if cfg.model.endswith((".pt", ".pth")) or Path(cfg.model).is_dir():
        raise InputError(f"{cfg.model}: fine-tune a registry model (continue a run with the same --out instead)")


def _distributed(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, initialised here) when launched by torchrun (WORLD_SIZE set)."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, device, False
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device, created


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------------------------------------
# validation


@torch.no_grad()
def validate(model: SamFamilyModel, tiles: list[TrainTile], cases: list[Case], modes: list[PromptMode],
             seed: int, cache: EmbeddingCache | None, class_names: list[str]) -> dict:
    """Validation Dice per prompt mode (the evaluate engine's protocol) and per-class accuracy of the head."""
    predictor = Predictor(model, batch_size=64)
    dices: dict[str, list[float]] = {m.name: [] for m in modes}
    correct = np.zeros(len(class_names), int)
    seen = np.zeros(len(class_names), int)
    for tile in tiles:
        case = cases[tile.case]
        y0, x0, y1, x1 = tile.window
        img = case.image[y0:y1, x0:x1]
        if cache is not None:
            predictor.set_embedding(cache.get_or_compute(predictor, img), case.name)
        else:
            predictor.set_image(img, case.name)
        for mode in modes:
            for run in run_mode_model(predictor, tile.objects, tile.window, mode, seed, _case_key(case.name)):
                dices[mode.name].append(dice(run.masks[-1], run.obj.mask_in(tile.window)))
        if class_names:
            emb = predictor.embedding
            scale = predictor.coordinate_scale()
            prompts = [Prompt(box=o.box() - np.array([x0, y0, x0, y0], dtype=np.float32)) for o in tile.objects]
            pts, bxs = prompt_tensors(prompts, scale, predictor.device)
            _, _, logits = decode_all(model, emb.features, pts, bxs, None)
            pred = logits.argmax(1).cpu().numpy()
            for p, c in zip(pred, tile.classes):
                seen[c] += 1
                correct[c] += int(p == c)
    out = {f"val_dice_{k}": (float(np.mean(v)) if v else math.nan) for k, v in dices.items()}
    out["val_objects"] = len(dices[modes[0].name])
    if class_names:
        out["val_class_accuracy"] = float(correct.sum() / seen.sum()) if seen.sum() else math.nan
        out["class_accuracy"] = {n: (float(correct[i] / seen[i]) if seen[i] else None)
                                 for i, n in enumerate(class_names)}
        out["class_objects"] = {n: int(seen[i]) for i, n in enumerate(class_names)}
    return out


# ---------------------------------------------------------------------------------------------------------
# the engine


def _say(cfg: FinetuneConfig, rank: int, text: str) -> None:
    if rank == 0 and cfg.show_progress:
        tqdm.write(text, file=sys.stderr)


def finetune(cfg: FinetuneConfig) -> dict:
    """Train (or resume) a fine-tuning run in cfg.out; returns the summary (also RUN/summary.json)."""
    from medsamkit.core.runtime import select_device
    from medsamkit.models.loading import load_model

    _check_config(cfg)
    cfg.data = [cfg.data] if isinstance(cfg.data, str) else list(cfg.data)
    modes = parse_modes(cfg.prompts)
    out = Path(cfg.out)
    device = select_device(cfg.device)
    rank, world, device, created_group = _distributed(device)
    try:
        return _finetune(cfg, modes, out, device, rank, world, load_model)
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _finetune(cfg, modes, out: Path, device, rank: int, world: int, load_model) -> dict:
    t_start = time.perf_counter()
    last_path = out / "last.pt"
    resume = torch.load(last_path, map_location="cpu", weights_only=True) if last_path.exists() else None
    cfg_dict = asdict(cfg)
    if resume is not None:
        diff = resume_differences(resume["config"], cfg_dict)
        if diff:
            raise InputError(f"{out}: holds a run with another configuration ({', '.join(diff)} differ); "
                             "use another --out folder")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg_dict, indent=2))

    cases, origin, names = load_cases(cfg)
    class_names = class_names_for(cases, origin, names) if cfg.classes else []

    def class_of(case_index: int, obj: ImageObject) -> int:
        if len(names) > 1:
            return origin[case_index]
        return class_names.index(str(obj.label))

    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, cfg.checkpoint)
    recipe = recipe_of(cfg, class_names)
    counts = apply_recipe(model, recipe)
    model.to(device).eval()  # eval throughout: the frozen encoder's BatchNorm statistics must not move
    _say(cfg, rank, f"finetune {cfg.mode}: {counts['trainable']:,} trainable of {counts['total']:,} parameters")

    train_idx, val_idx = split_cases(cases, origin, cfg.val_fraction, cfg.seed)
    size = model.preprocessing.input_size
    cls_fn = class_of if class_names else None
    train_tiles = [t for i in train_idx for t in plan_case_tiles(cases[i], i, cfg, size, None, cls_fn)]
    val_tiles = [t for i in val_idx for t in plan_case_tiles(cases[i], i, cfg, size, cfg.val_objects, cls_fn)]
    if not train_tiles:
        raise InputError(f"{', '.join(cfg.data)}: no training objects of at least {cfg.min_area} px")

    cache = None
    embed_seconds = 0.0  # time this call spent filling the embedding cache
    train_keys: list[str] = []
    if cfg.mode == "decoder":  # frozen encoder: embed every tile once, train on the cached features
        cache = EmbeddingCache(cfg.cache or out / "embeddings", model)
        predictor = Predictor(model)
        every = train_tiles + val_tiles
        mine = every[rank::world]
        for tile in tqdm(mine, desc="embed tiles", unit="tile", disable=not cfg.show_progress or rank != 0):
            y0, x0, y1, x1 = tile.window
            cache.get_or_compute(predictor, cases[tile.case].image[y0:y1, x0:x1], cases[tile.case].name)
        _barrier(world)
        embed_seconds = round(time.perf_counter() - t_start, 2)
        train_keys = [cache.key(cases[t.case].image[t.window[0]:t.window[2], t.window[1]:t.window[3]])
                      for t in train_tiles]

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    objective: nn.Module = Objective(model, modes)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)

    epoch, batch0, step = 0, 0, 0
    loss_sum, loss_n = 0.0, 0
    best_score, best_epoch = -math.inf, -1
    if resume is not None:
        if set(resume["model"]) != set(finetuned_state(model, recipe)):
            raise InputError(f"{last_path}: saved weights do not match the run's recipe; use another --out folder")
        model.load_state_dict(resume["model"], strict=False)
        opt.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["rng"]["torch"])
        epoch, batch0, step = resume["epoch"], resume["batch"], resume["step"]
        loss_sum, loss_n = resume["loss_sum"], resume["loss_n"]
        best_score, best_epoch = resume["best_score"], resume["best_epoch"]
        if rank == 0:
            _truncate_csv(out / "steps.csv", lambda r: int(r["step"]) <= step)
            _truncate_csv(out / "metrics.csv", lambda r: int(r["epoch"]) <= epoch)  # completed epochs
        _say(cfg, rank, f"resuming {out} at epoch {epoch + 1}, batch {batch0}, step {step}")

    sha = base_sha256(cfg)

    def checkpoint(ep: int, b: int) -> dict:
        return {"format": CHECKPOINT_FORMAT, "base_model": cfg.model, "base_checkpoint": cfg.checkpoint,
                "base_sha256": sha, "recipe": recipe, "config": cfg_dict, "parameters": counts,
                "model": finetuned_state(model, recipe), "optimizer": opt.state_dict(),
                "rng": {"torch": torch.get_rng_state()}, "epoch": ep, "batch": b, "step": step,
                "loss_sum": loss_sum, "loss_n": loss_n, "best_score": best_score, "best_epoch": best_epoch}

    stopped = None
    last_metrics: dict = {}
    while epoch < cfg.epochs and stopped is None:
        batches = epoch_batches(train_tiles, cfg, epoch)
        usable = len(batches) - len(batches) % world  # equal batch counts on every rank
        bar = tqdm(total=usable // world, initial=batch0 // world, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="step", disable=not cfg.show_progress or rank != 0)
        for b in range(batch0, usable, world):
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stopped = "max_steps"
                break
            t_idx, obj_idx = batches[b + rank]
            tile = train_tiles[t_idx]
            y0, x0, y1, x1 = tile.window
            if cache is not None:
                emb = cache.load(train_keys[t_idx]) or cache.get_or_compute(
                    Predictor(model), cases[tile.case].image[y0:y1, x0:x1])
                tile_input, is_feat, resized = emb.features.to(device), True, emb.input_size
            else:
                img = as_rgb_float(cases[tile.case].image[y0:y1, x0:x1], cases[tile.case].name)
                x, resized = preprocess(model.preprocessing, img)
                tile_input, is_feat = x.to(device), False
            truths = [tile.objects[j].mask_in(tile.window) for j in obj_idx]
            classes = [tile.classes[j] for j in obj_idx] if tile.classes else []
            rng = np.random.default_rng([cfg.seed, epoch, b + rank])
            try:
                loss = objective(tile_input, is_feat, tuple(resized), truths, classes, rng)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            except KeyboardInterrupt:  # no weight changed yet: keep the position for an exact resume
                if rank == 0:
                    _atomic_save(checkpoint(epoch, b), out / "last.pt")
                raise
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch, b, usable)
            opt.step()
            value = loss.detach()
            if world > 1:
                torch.distributed.all_reduce(value)
                value = value / world
            step += 1
            loss_sum += float(value)
            loss_n += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}")
            if rank == 0:
                _append_csv(out / "steps.csv", {"epoch": epoch + 1, "step": step, "loss": f"{float(value):.8f}",
                                                "lr": f"{opt.param_groups[0]['lr']:.6g}"})
                if cfg.save_every and step % cfg.save_every == 0:
                    _atomic_save(checkpoint(epoch, b + world), out / "last.pt")
        else:
            b = usable
        bar.close()
        if stopped is not None:
            if rank == 0:
                _atomic_save(checkpoint(epoch, b), out / "last.pt")
            break
        # end of epoch: validation (rank 0), metrics, curves, checkpoints
        row = {"epoch": epoch + 1, "step": step, "train_loss": round(loss_sum / max(loss_n, 1), 6)}
        if rank == 0:
            val = validate(model, val_tiles, cases, modes, cfg.seed, cache, class_names) if val_tiles else {}
            per_class = val.pop("class_accuracy", None)
            per_class_n = val.pop("class_objects", None)
            row.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in val.items()})
            row["seconds"] = round(time.perf_counter() - t_start, 2)
            dices = [v for k, v in val.items() if k.startswith("val_dice_") and not math.isnan(v)]
            score = float(np.mean(dices)) if dices else -row["train_loss"]
            _append_csv(out / "metrics.csv", row)
            write_curves(out / "metrics.csv", out / "curves.png")
            last_metrics = dict(row)
            if per_class is not None:
                last_metrics.update(class_accuracy=per_class, class_objects=per_class_n)
            epoch += 1
            loss_sum, loss_n, batch0 = 0.0, 0, 0
            improved = score > best_score
            if improved:
                best_score, best_epoch = score, epoch
            ckpt = checkpoint(epoch, 0)
            _atomic_save(ckpt, out / "last.pt")
            if improved:
                _atomic_save(ckpt, out / "best.pt")
            _say(cfg, rank, f"epoch {epoch}: {json.dumps(row)}")
        else:
            epoch += 1
            loss_sum, loss_n, batch0 = 0.0, 0, 0
        _barrier(world)

    summary = {"out": str(out), "mode": cfg.mode, "base_model": cfg.model, "parameters": counts,
               "train_images": len(train_idx), "val_images": len(val_idx),
               "val_sources": sorted({source_of(cases[i]) for i in val_idx}),
               "train_objects": sum(len(t.objects) for t in train_tiles), "train_tiles": len(train_tiles),
               "val_objects": sum(len(t.objects) for t in val_tiles), "epochs_done": epoch, "steps": step,
               "stopped": stopped, "best_epoch": best_epoch, "best_score": best_score,
               "classes": class_names, "last": last_metrics, "seconds": round(time.perf_counter() - t_start, 2),
               "embed_seconds": embed_seconds,
               "cache": None if cache is None else {"folder": str(cache.folder), **cache.stats}}
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
