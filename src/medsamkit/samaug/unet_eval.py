"""`medsamkit unet eval`: sliding-window inference of a trained MedNet, instances from its class probabilities,
AJI (and GlaS object F1 / Dice) per image; also scores the held-out images at the end of training.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medsamkit.core.atomic import write_json_atomic, write_text_atomic
from medsamkit.core.errors import InputError
from medsamkit.core.runtime import select_device
from medsamkit.io.images import write_mask
from medsamkit.metrics import aji, object_dice, object_f1
from medsamkit.samaug.unet import LabelledInput, load_cases, load_run
from medsamkit.samaug.unet_targets import instances_from_probs


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


def score_images(model: torch.nn.Module, cases: list[LabelledInput], device: torch.device,
                 cfg: UNetEvalConfig, masks_dir: Path | None = None, roi: int = 256) -> list[dict]:
    """Per-image rows (image, aji, n_truth, n_pred[, object_f1, object_dice], seconds) for (name, input, truth)."""
    rows = []
    for name, x, truth in tqdm(cases, disable=not cfg.progress, desc="unet eval"):
        t0 = time.perf_counter()
        probs = predict_probs(model, x, device, roi, cfg.overlap, cfg.sw_batch_size)
        pred = instances_from_probs(probs, cfg.min_size)
        row = {"image": name, "aji": aji(pred, truth), "n_truth": int(len(np.unique(truth[truth > 0]))),
               "n_pred": int(pred.max())}
        if cfg.glas:
            row["object_f1"] = object_f1(pred=pred, truth=truth)
            row["object_dice"] = object_dice(pred=pred, truth=truth)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if masks_dir is not None:
            write_mask(masks_dir / f"{name.replace('/', '__')}.png", pred)
        rows.append(row)
    return rows


def summarise(rows: list[dict], glas: bool) -> dict:
    """Mean AJI (and GlaS means) over per-image rows."""
    out: dict = {"n": len(rows), "mean_aji": float(np.mean([r["aji"] for r in rows]))}
    if glas:
        out["mean_object_f1"] = float(np.mean([r["object_f1"] for r in rows]))
        out["mean_object_dice"] = float(np.mean([r["object_dice"] for r in rows]))
    return out


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


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
    write_text_atomic(out / "per_image.csv", _csv_text(rows))
    summary = {**summarise(rows, cfg.glas), "run": str(cfg.run), "data": str(cfg.data), "priors": cfg.priors,
               "checkpoint_iteration": train_cfg["iteration"],
               "eval": {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("progress",)}}
    write_json_atomic(out / "summary.json", summary)
    return summary
