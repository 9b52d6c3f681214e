"""MedNet of SAMAug (PROTOCOLS.md "SAMAug" step 4): a MONAI U-Net trained on 3-class nucleus targets, with
or without SAM priors fused into the input; resumable training, sliding-window inference and AJI evaluation.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medsamkit.core.errors import InputError
from medsamkit.core.runtime import select_device
from medsamkit.io.datasets import Case, open_dataset
from medsamkit.io.images import write_mask
from medsamkit.metrics import aji, object_dice, object_f1
from medsamkit.predictor import as_rgb_float
from medsamkit.samaug.unet_targets import N_CLASSES, instances_from_probs, three_class_target

CHECKPOINT = "last.pt"
METRICS_CSV = "metrics.csv"
LOSS_PNG = "loss.png"
# Changing any of these between a checkpoint and a rerun would silently train a different experiment.
_RESUME_KEYS = ("data", "priors", "batch_size", "crop", "seed", "val_images", "channels", "strides",
                "num_res_units", "dice", "boundary_width", "max_images", "prior_normalisation")


@dataclass
class UNetConfig:
    """Everything `medsamkit unet train` needs; the CLI only fills this in."""

    data: str
    out: str
    priors: str | None = None  # folder of SAMAug priors (medsamkit.samaug.priors format); None = baseline
    prior_normalisation: str = "clip"  # seg prior clipped to [0, 1] ("clip") or added raw ("none"), see fuse
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
class UNetEvalConfig:
    """Everything `medsamkit unet eval` needs; the CLI only fills this in."""

    run: str
    data: str
    priors: str | None = None
    out: str | None = None  # default RUN/eval-<data folder name>
    max_images: int | None = None
    glas: bool = False  # also GlaS object F1 / object Dice
    min_size: int = 10  # interior components below this many pixels are noise
    overlap: float = 0.25
    sw_batch_size: int = 4
    save_masks: bool = True
    device: str | None = None
    threads: int | None = None
    progress: bool = True


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


def build_unet(channels: tuple[int, ...] = (16, 32, 64, 128, 256), strides: tuple[int, ...] = (2, 2, 2, 2),
               num_res_units: int = 2) -> torch.nn.Module:
    """The 2D MONAI U-Net: 3 input channels (RGB or image + priors) -> 3 class logits."""
    from monai.networks.nets import UNet

    if len(strides) != len(channels) - 1:
        raise InputError(f"U-Net needs len(strides) == len(channels) - 1, got {len(strides)} and {len(channels)}")
    return UNet(spatial_dims=2, in_channels=3, out_channels=N_CLASSES, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units)


def image_unit_rgb(image: np.ndarray, source: object | None = None) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] by SAMAug fusion's intensity rule (`priors.unit_image`), so the baseline
    and the SAMAug U-Net see the same image; grey is repeated to 3 channels, alpha dropped."""
    from medsamkit.samaug.priors import unit_image

    return np.ascontiguousarray(as_rgb_float(unit_image(image, source), source))


def network_input(image: np.ndarray, name: str, priors_dir: str | Path | None,
                  prior_normalisation: str = "clip") -> np.ndarray:
    """The U-Net's input for one image, identical at training and test time: float32 (H, W, 3).

    Without priors: the image in [0, 1]. With priors: SAMAug fusion (medsamkit.samaug.priors.fuse) of the
    image with its saved segmentation and boundary priors (seg prior clipped to [0, 1] by default).
    """
    if priors_dir is None:
        return image_unit_rgb(image, name)
    from medsamkit.samaug.priors import fuse, load_priors

    seg, boundary = load_priors(priors_dir, name)
    if seg.shape != np.asarray(image).shape[:2]:
        raise InputError(f"{Path(priors_dir) / name}: prior shape {seg.shape} does not match image shape "
                         f"{np.asarray(image).shape[:2]}")
    return np.ascontiguousarray(fuse(image, seg, boundary, prior_normalisation), dtype=np.float32)


def _instance_label(case: Case) -> np.ndarray:
    if case.kind != "instance":
        raise InputError(f"{case.name}: the U-Net needs instance label maps, this dataset has {case.kind} labels")
    lab = np.asarray(case.label)
    if lab.ndim != 2:
        raise InputError(f"{case.name}: label map must be 2D, got shape {lab.shape}")
    return lab


def load_cases(spec: str, priors_dir: str | None, max_images: int | None = None,
               prior_normalisation: str = "clip") -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, network input (H, W, 3), instance label) for every image of a data SPEC, sorted by name."""
    out = []
    for case in open_dataset(spec).cases(max_images):
        lab = _instance_label(case)
        out.append((case.name, network_input(case.image, case.name, priors_dir, prior_normalisation), lab))
    if not out:
        raise InputError(f"{spec}: no images found")
    return sorted(out, key=lambda c: c[0])


def _pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    pad_h, pad_w = max(0, size - arr.shape[0]), max(0, size - arr.shape[1])
    if not (pad_h or pad_w):
        return arr
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, widths)


def sample_batch(inputs: list[np.ndarray], targets: list[np.ndarray], rng: np.random.Generator, batch_size: int,
                 crop: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of random crops with random 90-degree rotations and flips: (B, 3, crop, crop), (B, crop, crop).

    Images are picked with probability proportional to their area, so each pixel is equally likely.
    """
    areas = np.array([t.size for t in targets], dtype=float)
    xs, ys = [], []
    for _ in range(batch_size):
        i = int(rng.choice(len(inputs), p=areas / areas.sum()))
        img, tgt = inputs[i], targets[i]
        y0 = int(rng.integers(0, img.shape[0] - crop + 1))
        x0 = int(rng.integers(0, img.shape[1] - crop + 1))
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        xi = np.rot90(img[y0:y0 + crop, x0:x0 + crop], k, axes=(0, 1))
        yi = np.rot90(tgt[y0:y0 + crop, x0:x0 + crop], k, axes=(0, 1))
        if flip:
            xi, yi = xi[:, ::-1], yi[:, ::-1]
        xs.append(np.moveaxis(xi, -1, 0))
        ys.append(yi)
    return np.ascontiguousarray(np.stack(xs)), np.ascontiguousarray(np.stack(ys))


def _plain_config(cfg: UNetConfig) -> dict:
    """The config as plain types (lists for tuples) for the checkpoint and JSON."""
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _same_setting(key: str, old: object, new: object) -> bool:
    """Equal settings; data/priors folders compare as resolved paths (relative vs absolute is the same run)."""
    if key in ("data", "priors") and isinstance(old, str) and isinstance(new, str) and not old.startswith("builtin:"):
        return old == new or Path(old).resolve() == Path(new).resolve()
    return old == new


def _check_resumable(saved: dict, cfg: UNetConfig, path: Path) -> None:
    now = _plain_config(cfg)
    changed = [k for k in _RESUME_KEYS if not _same_setting(k, saved.get(k), now.get(k))]
    if changed:
        diffs = ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise InputError(f"{path}: checkpoint was trained with different settings ({diffs}); use a new --out")


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["iteration"]) <= upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["iteration", "loss", "lr", "seconds"])
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, iteration: int,
                     rng: np.random.Generator, cfg: UNetConfig) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "iteration": iteration,
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "config": _plain_config(cfg),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated last.pt


def plot_loss(rows: list[dict], path: Path) -> None:
    """Loss curve PNG (raw loss and a moving average over up to 50 iterations) from metrics.csv rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(cfg: UNetConfig) -> TrainResult:
    """Train (or resume from RUN/last.pt) up to ``cfg.iterations``; writes last.pt, loss.png and metrics.csv
    (iteration, loss, lr, seconds of wall-clock for that iteration)."""
    if cfg.iterations < 1 or cfg.batch_size < 1 or cfg.crop < 16 or cfg.checkpoint_every < 1:
        raise InputError("iterations, batch size and checkpoint interval must be >= 1 and the crop >= 16 pixels")
    factor = int(np.prod(cfg.strides))
    if cfg.crop % factor:
        raise InputError(f"crop {cfg.crop} must be a multiple of the U-Net's total stride {factor}")
    device = select_device(cfg.device)
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    ckpt_path = run / CHECKPOINT
    saved = None
    if ckpt_path.exists():
        saved = _load_state(ckpt_path)
        _check_resumable(saved["config"], cfg, ckpt_path)

    cases = load_cases(cfg.data, cfg.priors, cfg.max_images, cfg.prior_normalisation)
    if cfg.val_images >= len(cases):
        raise InputError(f"{cfg.data}: {len(cases)} images, cannot hold out {cfg.val_images} for validation")
    train_cases = cases[: len(cases) - cfg.val_images]
    inputs = [_pad_to(x, cfg.crop) for _, x, _ in train_cases]
    targets = [_pad_to(three_class_target(lab, cfg.boundary_width), cfg.crop) for _, _, lab in train_cases]

    torch.manual_seed(cfg.seed)
    model = build_unet(cfg.channels, cfg.strides, cfg.num_res_units).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    start = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
        start = int(saved["iteration"])
    log_path = run / METRICS_CSV
    rows = _read_log(log_path, start)
    (run / "config.json").write_text(json.dumps(_plain_config(cfg), indent=2))

    if cfg.dice:
        from monai.losses import DiceCELoss

        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

        def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return dice_ce(logits, y[:, None])
    else:
        loss_fn = torch.nn.CrossEntropyLoss()

    result = TrainResult(start_iteration=start, iterations=max(start, cfg.iterations), seconds=0.0)
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, disable=not cfg.progress,
               desc="unet train")
    for it in bar:
        t_it = time.perf_counter()
        lr = cfg.lr_at(it)
        for group in opt.param_groups:
            group["lr"] = lr
        xb, yb = sample_batch(inputs, targets, rng, cfg.batch_size, cfg.crop)
        x = torch.from_numpy(xb).to(device)
        y = torch.from_numpy(yb.astype(np.int64)).to(device)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        result.losses.append(value)
        rows.append({"iteration": it + 1, "loss": repr(value), "lr": lr,
                     "seconds": round(time.perf_counter() - t_it, 4)})
        bar.set_postfix(loss=f"{value:.4f}")
        if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:
            _save_checkpoint(ckpt_path, model, opt, it + 1, rng, cfg)
            _write_log(log_path, rows)
    result.seconds = time.perf_counter() - t0
    if rows:
        plot_loss(rows, run / LOSS_PNG)
    if cfg.val_images:
        val = cases[len(cases) - cfg.val_images:]
        per_image = score_images(model, val, device, UNetEvalConfig(run=str(run), data=cfg.data, progress=False),
                                 roi=cfg.crop)
        result.validation = _summary(per_image, glas=False)
        (run / "validation.json").write_text(json.dumps(result.validation, indent=2))
    return result


def _load_state(path: Path) -> dict:
    """A U-Net checkpoint's contents (tensors on CPU); InputError when missing or not one of ours."""
    if not path.is_file():
        raise InputError(f"{path}: no U-Net checkpoint (train one with `medsamkit unet train`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not {"model", "iteration", "config"} <= set(state):
            raise KeyError("model/iteration/config")
    except Exception as exc:  # a foreign or damaged file is the user's input, not our bug
        raise InputError(f"{path}: not a medsamkit U-Net checkpoint ({type(exc).__name__}: {exc})") from None
    return state


def load_run(run: str | Path, device: torch.device | None = None) -> tuple[torch.nn.Module, dict]:
    """The trained U-Net of a run folder (or a last.pt path) in eval mode, and its training config
    (with the checkpoint's ``iteration`` added)."""
    path = Path(run)
    state = _load_state(path / CHECKPOINT if path.is_dir() else path)
    cfg = {**state["config"], "iteration": int(state["iteration"])}
    model = build_unet(tuple(cfg["channels"]), tuple(cfg["strides"]), cfg["num_res_units"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise InputError(f"{path}: checkpoint weights do not fit its U-Net settings ({exc})") from None
    model.eval()
    return model.to(device or torch.device("cpu")), cfg


def predict_probs(model: torch.nn.Module, x: np.ndarray, device: torch.device | None = None, roi: int = 256,
                  overlap: float = 0.25, sw_batch_size: int = 4) -> np.ndarray:
    """Class probabilities (3, H, W) for a network input (H, W, 3): Gaussian-blended sliding windows."""
    from monai.inferers import sliding_window_inference

    device = device or next(model.parameters()).device
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 0)))[None].to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = sliding_window_inference(t, roi_size=(roi, roi), sw_batch_size=sw_batch_size, predictor=model,
                                          overlap=overlap, mode="gaussian")
    model.train(was_training)
    return torch.softmax(logits, dim=1)[0].cpu().numpy()


def score_images(model: torch.nn.Module, cases: list[tuple[str, np.ndarray, np.ndarray]], device: torch.device,
                 cfg: UNetEvalConfig, masks_dir: Path | None = None, roi: int = 256) -> list[dict]:
    """Per-image rows (image, aji, n_truth, n_pred[, object_f1, object_dice], seconds) for (name, input, truth)."""
    rows = []
    for name, x, truth in tqdm(cases, disable=not cfg.progress, desc="unet eval"):
        t0 = time.perf_counter()
        probs = predict_probs(model, x, device, roi, cfg.overlap, cfg.sw_batch_size)
        pred = instances_from_probs(probs, cfg.min_size)
        row = {"image": name, "aji": aji(truth, pred), "n_truth": int(len(np.unique(truth[truth > 0]))),
               "n_pred": int(pred.max())}
        if cfg.glas:
            row["object_f1"] = object_f1(truth, pred)
            row["object_dice"] = object_dice(truth, pred)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if masks_dir is not None:
            write_mask(masks_dir / f"{name.replace('/', '__')}.png", pred)
        rows.append(row)
    return rows


def _summary(rows: list[dict], glas: bool) -> dict:
    out: dict = {"n": len(rows), "mean_aji": float(np.mean([r["aji"] for r in rows]))}
    if glas:
        out["mean_object_f1"] = float(np.mean([r["object_f1"] for r in rows]))
        out["mean_object_dice"] = float(np.mean([r["object_dice"] for r in rows]))
    return out


def evaluate(cfg: UNetEvalConfig) -> dict:
    """Segment every image of a SPEC with a trained run; writes per_image.csv, summary.json, masks/*.png."""
    device = select_device(cfg.device)
    model, train_cfg = load_run(cfg.run, device)
    if train_cfg.get("priors") and not cfg.priors:
        raise InputError(f"{cfg.run}: this U-Net was trained with SAMAug priors; pass --priors for the test images")
    if cfg.priors and not train_cfg.get("priors"):
        raise InputError(f"{cfg.run}: this U-Net was trained without priors; do not pass --priors")
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / f"eval-{Path(str(cfg.data)).name.replace(':', '-')}"
    out.mkdir(parents=True, exist_ok=True)
    cases = load_cases(cfg.data, cfg.priors, cfg.max_images, train_cfg.get("prior_normalisation", "clip"))
    rows = score_images(model, cases, device, cfg, out / "masks" if cfg.save_masks else None,
                        roi=int(train_cfg["crop"]))
    with (out / "per_image.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {**_summary(rows, cfg.glas), "run": str(cfg.run), "data": str(cfg.data), "priors": cfg.priors,
               "checkpoint_iteration": train_cfg["iteration"],
               "eval": {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("progress",)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
