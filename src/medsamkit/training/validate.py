"""End-of-epoch validation: the evaluate engine's protocol on the held-out tiles, and the class head's
accuracy per class."""

from __future__ import annotations

import math

import numpy as np
import torch

from medsamkit.core.seeds import name_key
from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.io.datasets import Case
from medsamkit.metrics import dice
from medsamkit.models.sam import SamFamilyModel
from medsamkit.predictor import Predictor
from medsamkit.prompts import Prompt, PromptMode
from medsamkit.prompts.objects import run_mode_model
from medsamkit.training.data import TrainTile
from medsamkit.training.objective import decode_all, prompt_tensors


def _set_tile(predictor: Predictor, case: Case, tile: TrainTile, cache: EmbeddingCache | None) -> None:
    y0, x0, y1, x1 = tile.window
    img = case.image[y0:y1, x0:x1]
    if cache is not None:
        predictor.set_embedding(cache.get_or_compute(predictor, img), case.name)
    else:
        predictor.set_image(img, case.name)


def _head_predictions(model: SamFamilyModel, predictor: Predictor, tile: TrainTile) -> np.ndarray:
    """The class head's answer for each object of the tile, prompted with its tight box."""
    y0, x0 = tile.window[:2]
    prompts = [Prompt(box=o.box() - np.array([x0, y0, x0, y0], dtype=np.float32)) for o in tile.objects]
    pts, bxs = prompt_tensors(prompts, predictor.coordinate_scale(), predictor.device)
    _, _, logits = decode_all(model, predictor.embedding.features, pts, bxs, None)
    return logits.argmax(1).cpu().numpy()


@torch.no_grad()
def trained_clicks(modes: list[PromptMode]) -> str:
    """The click strategy a run's weights will be served with: native once trained with clicks (the saved
    model declares point prompts), else as the model says (``auto``)."""
    return "native" if any(m.n_points > 0 for m in modes) else "auto"


def validate(model: SamFamilyModel, tiles: list[TrainTile], cases: list[Case], modes: list[PromptMode],
             seed: int, cache: EmbeddingCache | None, class_names: list[str], clicks: str = "auto") -> dict:
    """Validation Dice per prompt mode (the evaluate engine's protocol, clicks answered by the ``clicks``
    strategy of ``prompts.clicks``) and per-class accuracy of the head."""
    predictor = Predictor(model, batch_size=64)
    dices: dict[str, list[float]] = {m.name: [] for m in modes}
    correct = np.zeros(len(class_names), int)
    seen = np.zeros(len(class_names), int)
    for tile in tiles:
        case = cases[tile.case]
        _set_tile(predictor, case, tile, cache)
        for mode in modes:
            for run in run_mode_model(predictor, tile.objects, tile.window, mode, seed, name_key(case.name),
                                      clicks=clicks):
                dices[mode.name].append(dice(run.masks[-1], run.obj.mask_in(tile.window)))
        if class_names:
            for p, c in zip(_head_predictions(model, predictor, tile), tile.classes):
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


def metric_columns(modes: list[PromptMode], validating: bool, class_head: bool) -> list[str]:
    """The columns of RUN/metrics.csv: one row per epoch (the order the first rows always had)."""
    val = [f"val_dice_{m.name}" for m in modes] + ["val_objects"] if validating else []
    if validating and class_head:
        val.append("val_class_accuracy")
    return ["epoch", "step", "train_loss", *val, "seconds"]
