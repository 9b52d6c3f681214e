"""Fit the click search's ranking (issue 26): the weights of ``SearchSettings.ranker`` from the training splits.

For a centre click and a random click on every object (``evaluate``'s views and object choice, at most
--max-objects per image) of GlaS train and MoNuSeg train, the search's whole candidate set is decoded (every
side and aspect, centred and off-centre squares: ``prompts.search``), each candidate's ranking features
(``prompts.ranking.ranking_features``) and its true IoU in the view are kept. The score [f, f^2, 1] @ w is fitted
to maximise the expected IoU of the softmax(score / --tau) choice per prompt (least squares of the IoU as the
start), and checked by 2-fold cross-validation by image: the IoU of the first-ranked candidate with the fitted
weights vs with the predicted IoU alone vs the best candidate there is (oracle).

Prints JSON (the weights of ``prompts.ranking.FITTED_RANKER``, the folds' IoU) and writes
benchmarks/results/click_ranker.json. This is how ``FITTED_RANKER`` was made (kept to reproduce it); users fit a
ranking to their own data with `medsamkit fit-clicks` (``evaluation.click_ranking``: the same candidates, with
the broken-click penalty in the objective, and cross-validated against the default search).
Usage: python benchmarks/fit_click_ranker.py [--glas-images 16] [--monuseg-images 4] [--max-objects 40]
       [--tau 0.05] [--out benchmarks/results/click_ranker.json]
(--smoke: one GlaS and one MoNuSeg image, 4 objects each, in a temporary folder)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from _shared import REPO, add_smoke, apply_smoke, monuseg_dir, require_shared, shared_dir
from medsamkit.core.runtime import setup
from medsamkit.core.tiling import plan_tiles, tile_size_for
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.engine import case_objects
from medsamkit.io.datasets import open_dataset
from medsamkit.metrics import iou
from medsamkit.models import load_model
from medsamkit.predictor import Predictor, upscale_logits
from medsamkit.prompts.ranking import FEATURES, ranking_features, score_features
from medsamkit.prompts.search import search
from medsamkit.prompts.search_settings import SearchSettings
from medsamkit.prompts.simulate import initial_prompt

MODES = ("center", "random1")


def collect(root: Path, images: int, max_objects: int, predictor: Predictor, settings: SearchSettings) -> list[dict]:
    """Per prompt: the image index, mode, candidate features (K, F) and true IoU (K,) in the view."""
    model = predictor.model
    per_px = model.mask_input_size[0] / model.preprocessing.input_size
    cfg = EvaluateConfig(data=str(root), out="", max_objects=max_objects)
    dataset = open_dataset(str(root)).head(images)
    out = []
    for index, case in enumerate(dataset.cases()):
        chosen, _ = case_objects(case, cfg)
        tile = tile_size_for(case.label.shape[:2], None, model.preprocessing.input_size, cfg.view_min_side)
        rng = np.random.default_rng(index)
        for window, objects in plan_tiles(chosen, case.label.shape[:2], tile, cfg.tile_overlap).items():
            y0, x0, y1, x1 = window
            predictor.set_image(case.image[y0:y1, x0:x1])
            emb = predictor.embedding
            scale = predictor.coordinate_scale()
            for obj in objects:
                truth = obj.mask_in(window)
                for mode in MODES:
                    prompt = initial_prompt(mode, truth, rng)
                    clicks, labels = prompt.points * scale, prompt.labels
                    cands, _ = search(model, emb.features, emb.input_size, clicks, labels, settings)
                    views = upscale_logits(cands.logits[:, None].float(), model.preprocessing.input_size,
                                           emb.input_size, emb.original_size)[:, 0] > 0
                    out.append({"image": index, "mode": mode,
                                "features": ranking_features(cands, clicks * per_px, labels, per_px, settings.reach,
                                                             settings.stability_offset),
                                "iou": np.array([iou(v, truth) for v in views.numpy()])})
    return out


def fit(prompts: list[dict], tau: float, steps: int = 400) -> np.ndarray:
    """Weights w maximising the mean over prompts of sum(softmax([f, f^2, 1] @ w / tau) * IoU)."""
    design = [np.concatenate([p["features"], p["features"] ** 2, np.ones((len(p["iou"]), 1))], 1) for p in prompts]
    start = np.linalg.lstsq(np.concatenate(design), np.concatenate([p["iou"] for p in prompts]), rcond=None)[0]
    xs = [torch.tensor(d) for d in design]
    ys = [torch.tensor(p["iou"]) for p in prompts]
    w = torch.tensor(start).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        gain = sum((torch.softmax(x @ w / tau, 0) * y).sum() for x, y in zip(xs, ys)) / len(xs)
        loss = -gain + 1e-3 * (w * w).sum()
        loss.backward()
        opt.step()
    return w.detach().numpy()


def first_ranked(prompts: list[dict], weights: np.ndarray | tuple) -> dict[str, float]:
    """Mean true IoU of the first-ranked candidate per mode."""
    out: dict[str, list[float]] = {}
    for p in prompts:
        out.setdefault(p["mode"], []).append(float(p["iou"][np.argmax(score_features(p["features"], weights))]))
    return {m: round(float(np.mean(v)), 4) for m, v in sorted(out.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glas-images", type=int, default=16)
    ap.add_argument("--monuseg-images", type=int, default=4)
    ap.add_argument("--max-objects", type=int, default=40)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "click_ranker.json"))
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, ("out",), glas_images=1, monuseg_images=1, max_objects=4)
    setup(threads=2)  # the CLI's allocator setting and thread count
    shared = require_shared(shared_dir(), "GlaS / MoNuSeg train")
    predictor = Predictor(load_model("litemedsam", device="cpu"))
    # the whole candidate set in one decode: the ranking then orders what coarse-to-fine may keep
    settings = SearchSettings.fitted(refine_sides=0, ranker=())
    splits = {"glas": (shared / "data" / "glas" / "train", args.glas_images),
              "monuseg": (monuseg_dir("train") or shared / "data" / "monuseg" / "train", args.monuseg_images)}
    data = {name: collect(root, n, args.max_objects, predictor, settings)
            for name, (root, n) in splits.items() if n > 0}
    for name, prompts in data.items():  # images of different datasets stay apart in the folds
        for p in prompts:
            p["fold"] = (p["image"] + (name == "glas")) % 2
    every = [p for prompts in data.values() for p in prompts]
    folds = {}
    for fold in (0, 1):
        weights = fit([p for p in every if p["fold"] != fold], args.tau)
        for name, prompts in data.items():
            held = [p for p in prompts if p["fold"] == fold]
            if held:
                folds[f"{name} fold {fold}"] = {
                    "prompts": len(held), "fitted": first_ranked(held, weights),
                    "predicted_iou": first_ranked(held, ()),
                    "oracle": {m: round(float(np.mean([p["iou"].max() for p in held if p["mode"] == m])), 4)
                               for m in MODES}}
    weights = fit(every, args.tau)
    result = {"features": list(FEATURES), "design": "[f, f^2, 1]", "tau": args.tau,
              "splits": {k: {"root": str(v[0].relative_to(shared)), "images": v[1]} for k, v in splits.items()},
              "max_objects": args.max_objects, "prompts": len(every),
              "ranker": [round(float(w), 4) for w in weights], "cross_validation": folds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
