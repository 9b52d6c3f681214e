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
from medsamkit.models.sam import CLICK_STRATEGIES, SamFamilyModel
from medsamkit.predictor import Predictor
from medsamkit.prompts import Prompt, PromptMode
from medsamkit.prompts.objects import run_mode_model
from medsamkit.training.data import TrainTile
from medsamkit.training.objective import decode_all, prompt_tensors


def _set_tile(predictor: Predictor, case: Case, tile: TrainTile, cache: EmbeddingCache | None) -> None:
    y0, x0, y1, x1 = tile.window
    img = case.image[y0:y1, x0:x1]
    if cache is not None:
        predictor.set_embedding(cache.get_or_compute(predictor, img), case.name, img)
    else:
        predictor.set_image(img, case.name)


def _head_predictions(model: SamFamilyModel, predictor: Predictor, tile: TrainTile) -> np.ndarray:
    """The class head's answer for each object of the tile, prompted with its tight box."""
    y0, x0 = tile.window[:2]
    prompts = [Prompt(box=o.box() - np.array([x0, y0, x0, y0], dtype=np.float32)) for o in tile.objects]
    pts, bxs = prompt_tensors(prompts, predictor.coordinate_scale(), predictor.device)
    _, _, logits = decode_all(model, predictor.embedding.features, pts, bxs, None)
    return logits.argmax(1).cpu().numpy()


CHOOSE = "choose"  # validate the click modes under every strategy and report (and serve) the best


def trained_clicks(modes: list[PromptMode]) -> str:
    """How a run's validation answers clicks: once trained with clicks, ``choose`` (native, search or mixed; the
    best one is saved with the weights and served by ``auto``), else as the model says (``auto``)."""
    return CHOOSE if any(m.n_points > 0 for m in modes) else "auto"


@torch.no_grad()
def validate(model: SamFamilyModel, tiles: list[TrainTile], cases: list[Case], modes: list[PromptMode],
             seed: int, cache: EmbeddingCache | None, class_names: list[str], clicks: str = "auto") -> dict:
    """Validation Dice per prompt mode (the evaluate engine's protocol, clicks answered by the ``clicks``
    strategy of ``prompts.clicks``) and per-class accuracy of the head.

    ``clicks="choose"``: modes with clicks run under every strategy (``native``, ``search``, ``mixed``); they are
    reported under the one with the highest mean Dice over those modes (``clicks``; each one's mean as
    ``val_clicks_<strategy>``)."""
    strategies = CLICK_STRATEGIES if clicks == CHOOSE else (clicks,)
    predictor = Predictor(model, batch_size=64)
    dices: dict[tuple[str, str], list[float]] = {}
    correct = np.zeros(len(class_names), int)
    seen = np.zeros(len(class_names), int)
    for tile in tiles:
        case = cases[tile.case]
        _set_tile(predictor, case, tile, cache)
        for mode in modes:
            # a prompt without points is answered by the model alike under every strategy
            for strategy in strategies if mode.n_points else strategies[:1]:
                got = dices.setdefault((mode.name, strategy), [])
                for run in run_mode_model(predictor, tile.objects, tile.window, mode, seed, name_key(case.name),
                                          clicks=strategy):
                    got.append(dice(run.masks[-1], run.obj.mask_in(tile.window)))
        if class_names:
            for p, c in zip(_head_predictions(model, predictor, tile), tile.classes):
                seen[c] += 1
                correct[c] += int(p == c)
    out = pick_clicks(dices, modes, strategies)
    out["val_objects"] = len(dices.get((modes[0].name, strategies[0]), []))
    if class_names:
        out["val_class_accuracy"] = float(correct.sum() / seen.sum()) if seen.sum() else math.nan
        out["class_accuracy"] = {n: (float(correct[i] / seen[i]) if seen[i] else None)
                                 for i, n in enumerate(class_names)}
        out["class_objects"] = {n: int(seen[i]) for i, n in enumerate(class_names)}
    return out


def pick_clicks(dices: dict[tuple[str, str], list[float]], modes: list[PromptMode], strategies: tuple[str, ...]) -> dict:
    """``val_dice_<mode>`` under the strategy with the highest mean over the click modes (the first on a tie)."""
    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else math.nan

    clicked = [m.name for m in modes if m.n_points]
    means = {s: mean([mean(dices.get((n, s), [])) for n in clicked]) for s in strategies}
    best = strategies[0]
    for s in strategies[1:]:
        if means[s] > means[best]:
            best = s
    out = {f"val_dice_{m.name}": mean(dices.get((m.name, best if m.n_points else strategies[0]), []))
           for m in modes}
    if len(strategies) > 1:
        out["clicks"] = best
        out.update({f"val_clicks_{s}": means[s] for s in strategies})
    return out


def metric_columns(modes: list[PromptMode], validating: bool, class_head: bool) -> list[str]:
    """The columns of RUN/metrics.csv: one row per epoch (the order the first rows always had)."""
    val = [f"val_dice_{m.name}" for m in modes] + ["val_objects"] if validating else []
    if validating and trained_clicks(modes) == CHOOSE:
        val += ["clicks", *(f"val_clicks_{s}" for s in CLICK_STRATEGIES)]
    if validating and class_head:
        val.append("val_class_accuracy")
    return ["epoch", "step", "train_loss", *val, "seconds"]
