"""`medsamkit unet train`: resumable MedNet training on 3-class nucleus targets, with or without SAM priors.

The run folder is a ``RunStore``: ``config.json`` (a rerun with another experiment's settings is refused),
``metrics.csv`` (one row per iteration: iteration, loss, lr, seconds), cut back to the checkpoint's iteration
on resume; ``last.pt`` (model, optimiser and both random states) is written atomically every
``checkpoint_every`` iterations, so a resumed run repeats the uninterrupted one to the last bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medsamkit.core.atomic import save_torch_atomic, write_json_atomic
from medsamkit.core.errors import InputError
from medsamkit.core.figures import pyplot, save_figure
from medsamkit.core.results import RunStore
from medsamkit.core.runtime import select_device
from medsamkit.samaug.unet import CHECKPOINT, build_unet, load_cases, load_state, pad_to, sample_batch
from medsamkit.samaug.unet_eval import UNetEvalConfig, score_images, summarise
from medsamkit.samaug.unet_targets import three_class_target

METRICS = "metrics"  # the step table: RUN/metrics.csv
METRICS_FIELDS = ["iteration", "loss", "lr", "seconds"]
LOSS_PNG = "loss.png"
# Changing any of these between a checkpoint and a rerun would silently train a different experiment;
# the schedule (iterations, lr, lr switch) may change: a longer run is a plain resume.
RESUME_KEYS = ("data", "priors", "batch_size", "crop", "seed", "val_images", "channels", "strides",
               "num_res_units", "dice", "boundary_width", "max_images", "prior_normalisation")


@dataclass
class UNetConfig:
    """Everything `medsamkit unet train` needs; the CLI only fills this in."""

    data: str
    out: str
    priors: str | None = None  # folder of SAMAug priors (medsamkit.samaug.priors format); None = baseline
    # SAMAug fusion (medsamkit.samaug.fusion): "clip" (seg prior clipped to [0, 1]), "paper" (the listing:
    # raw seg, thick boundary from the masks) or "none" (raw seg, saved boundary); `unet train --fusion`
    prior_normalisation: str = "clip"
    iterations: int = 2000
    lr: float = 5e-4
    lr_after: float = 5e-5
    lr_switch: int | None = None  # iteration where lr drops to lr_after; None = 60% (paper: 30k of 50k)
    batch_size: int = 8
    crop: int = 256
    seed: int = 0
    val_images: int = 0  # the last N images (by name) are held out and scored (AJI) after training
    max_images: int | None = None
    device: str | None = None
    threads: int | None = None
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    dice: bool = False  # CE + Dice (monai DiceCELoss) instead of cross-entropy alone
    boundary_width: int = 1
    checkpoint_every: int = 100
    progress: bool = True

    def switch_iteration(self) -> int:
        """The iteration at which the learning rate drops from ``lr`` to ``lr_after``."""
        return self.lr_switch if self.lr_switch is not None else round(0.6 * self.iterations)

    def lr_at(self, iteration: int) -> float:
        """Learning rate used for the update that starts at ``iteration`` (0-based)."""
        return self.lr if iteration < self.switch_iteration() else self.lr_after


@dataclass
class TrainResult:
    """What one `train` call did: iterations run in this call, timing, and the losses it logged."""

    start_iteration: int
    iterations: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    validation: dict | None = None

    @property
    def iterations_per_second(self) -> float:
        """Training speed of this call (0 when nothing ran)."""
        n = self.iterations - self.start_iteration
        return n / self.seconds if n and self.seconds > 0 else 0.0


@dataclass
class _Trainer:
    """The state one training call advances: network, optimiser, sampling RNG, data, loss, run store."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    rng: np.random.Generator
    inputs: list[np.ndarray]
    targets: list[np.ndarray]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    store: RunStore
    device: torch.device


def plain_config(cfg: UNetConfig) -> dict:
    """The config as plain types (lists for tuples) for the checkpoint and config.json."""
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _same_setting(key: str, old: object, new: object) -> bool:
    """Equal settings; data/priors folders compare as resolved paths (relative vs absolute is the same run)."""
    if key in ("data", "priors") and isinstance(old, str) and isinstance(new, str) and not old.startswith("builtin:"):
        return old == new or Path(old).resolve() == Path(new).resolve()
    return old == new


def resume_differences(old: dict, new: dict) -> list[str]:
    """The experiment settings that differ between a run folder's config.json and a rerun (RunStore rule)."""
    return [k for k in RESUME_KEYS if not _same_setting(k, old.get(k), new.get(k))]


def open_run(cfg: UNetConfig) -> RunStore:
    """The run folder of `cfg` (refuses one that holds another experiment, in the one-line RunStore words)."""
    identity = {k: v for k, v in plain_config(cfg).items() if k != "progress"}
    return RunStore(cfg.out, identity, {METRICS: METRICS_FIELDS}, differences=resume_differences,
                    step_tables=(METRICS,))


def _check(cfg: UNetConfig) -> None:
    if cfg.iterations < 1 or cfg.batch_size < 1 or cfg.crop < 16 or cfg.checkpoint_every < 1:
        raise InputError("iterations, batch size and checkpoint interval must be >= 1 and the crop >= 16 pixels")
    factor = int(np.prod(cfg.strides))
    if cfg.crop % factor:
        raise InputError(f"crop {cfg.crop} must be a multiple of the U-Net's total stride {factor}")


def _loss_function(cfg: UNetConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if not cfg.dice:
        return torch.nn.CrossEntropyLoss()
    from monai.losses import DiceCELoss

    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return dice_ce(logits, y[:, None])

    return loss_fn


def _restore(trainer: _Trainer, path: Path) -> int:
    """Load a checkpoint into the trainer; the iteration to continue from (0 without one)."""
    if not path.exists():
        return 0
    saved = load_state(path)
    trainer.model.load_state_dict(saved["model"])
    trainer.opt.load_state_dict(saved["optimizer"])
    trainer.rng.bit_generator.state = saved["numpy_rng"]
    torch.set_rng_state(saved["torch_rng"])
    return int(saved["iteration"])


def _save_checkpoint(trainer: _Trainer, path: Path, iteration: int, cfg: UNetConfig) -> None:
    state = {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.opt.state_dict(),
        "iteration": iteration,
        "numpy_rng": trainer.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "config": plain_config(cfg),
    }
    save_torch_atomic(state, path)


def _step(trainer: _Trainer, cfg: UNetConfig, lr: float) -> float:
    """One optimiser update on a fresh random batch; its loss."""
    for group in trainer.opt.param_groups:
        group["lr"] = lr
    xb, yb = sample_batch(trainer.inputs, trainer.targets, trainer.rng, cfg.batch_size, cfg.crop)
    x = torch.from_numpy(xb).to(trainer.device)
    y = torch.from_numpy(yb.astype(np.int64)).to(trainer.device)
    loss = trainer.loss_fn(trainer.model(x), y)
    trainer.opt.zero_grad(set_to_none=True)
    loss.backward()
    trainer.opt.step()
    return float(loss.detach())


def _run_iterations(trainer: _Trainer, cfg: UNetConfig, start: int, result: TrainResult) -> None:
    """Iterations start..cfg.iterations; log rows are appended before each checkpoint that covers them, so
    the log never lacks a checkpointed iteration (rows past the checkpoint are cut on resume)."""
    ckpt_path = Path(cfg.out) / CHECKPOINT
    pending: list[dict] = []
    trainer.model.train()
    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, disable=not cfg.progress,
               desc="unet train")
    for it in bar:
        t_it = time.perf_counter()
        lr = cfg.lr_at(it)
        value = _step(trainer, cfg, lr)
        result.losses.append(value)
        pending.append({"iteration": it + 1, "loss": repr(value), "lr": lr,
                        "seconds": round(time.perf_counter() - t_it, 4)})
        bar.set_postfix(loss=f"{value:.4f}")
        if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:
            trainer.store.append(METRICS, pending)
            pending = []
            _save_checkpoint(trainer, ckpt_path, it + 1, cfg)


def plot_loss(rows: list[dict], path: Path) -> None:
    """Loss curve PNG (raw loss and a moving average over up to 50 iterations) from metrics.csv rows."""
    plt = pyplot()

    it = np.array([int(r["iteration"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(it, loss, lw=0.6, alpha=0.5, label="loss")
    window = min(50, loss.size // 10)
    if window > 1:
        ax.plot(it[window - 1:], np.convolve(loss, np.ones(window) / window, mode="valid"), lw=1.5,
                label=f"mean of {window}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.legend()
    save_figure(fig, path, 100)


def train(cfg: UNetConfig) -> TrainResult:
    """Train (or resume from RUN/last.pt) up to ``cfg.iterations``; writes last.pt, loss.png and metrics.csv
    (iteration, loss, lr, seconds of wall-clock for that iteration)."""
    _check(cfg)
    device = select_device(cfg.device)
    store = open_run(cfg)
    cases = load_cases(cfg.data, cfg.priors, cfg.max_images, cfg.prior_normalisation)
    if cfg.val_images >= len(cases):
        raise InputError(f"{cfg.data}: {len(cases)} images, cannot hold out {cfg.val_images} for validation")
    train_cases = cases[: len(cases) - cfg.val_images]
    torch.manual_seed(cfg.seed)
    model = build_unet(cfg.channels, cfg.strides, cfg.num_res_units).to(device)
    trainer = _Trainer(
        model=model, opt=torch.optim.Adam(model.parameters(), lr=cfg.lr), rng=np.random.default_rng(cfg.seed),
        inputs=[pad_to(x, cfg.crop) for _, x, _ in train_cases],
        targets=[pad_to(three_class_target(lab, cfg.boundary_width), cfg.crop) for _, _, lab in train_cases],
        loss_fn=_loss_function(cfg), store=store, device=device,
    )
    start = _restore(trainer, Path(cfg.out) / CHECKPOINT)
    store.keep_rows(METRICS, lambda r: int(r["iteration"]) <= start)

    result = TrainResult(start_iteration=start, iterations=max(start, cfg.iterations), seconds=0.0)
    t0 = time.perf_counter()
    _run_iterations(trainer, cfg, start, result)
    result.seconds = time.perf_counter() - t0
    rows = store.rows(METRICS)
    if rows:
        plot_loss(rows, Path(cfg.out) / LOSS_PNG)
    if cfg.val_images:
        held_out = cases[len(cases) - cfg.val_images:]
        per_image = score_images(model, held_out, device, UNetEvalConfig(run=cfg.out, data=cfg.data, progress=False),
                                 roi=cfg.crop)
        result.validation = summarise(per_image, glas=False)
        write_json_atomic(Path(cfg.out) / "validation.json", result.validation)
    return result
