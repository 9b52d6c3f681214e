"""How the 3D engine's click settings were chosen, and what a held-out choice of them gives: the CVPR 2025 protocol
(3D box + 5 clicks, ``volumes.protocol.run_class``) on builtin:lung-gtv for a grid of ``EngineSettings`` (the
growth guard ``max_growth``, re-propagation ``agree`` and ``reach``; the output answering the object, ``head_margin``
and ``head_regrow``, the others at their defaults), and a leave-one-volume-out check: for each
volume, the setting that scores best on the other volumes (mean of final Dice + DSC AUC / 4), and its curve on the
left-out volume. There is no held-out 3D split here: the engine's defaults were chosen on all these volumes (the
score of each setting is in the JSON; ``best_on_all_volumes`` is the best score, whose mean curve may fall), and the
leave-one-out curve is the honest estimate of what such a choice is worth on an unseen volume.

Usage: python benchmarks/cvpr25_settings.py [--data builtin:lung-gtv] [--threads 2] [--smoke]
(--smoke: two settings, one click, builtin:lung-gtv pat_2 cropped to 3 GTV slices). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict

import numpy as np

from _shared import add_smoke, apply_smoke
from cvpr25_3d import CT_WINDOW, resliced_folder
from medsamkit.core.runtime import setup
from medsamkit.core.seeds import name_key, object_rng
from medsamkit.models import load_model
from medsamkit.predictor import Predictor
from medsamkit.volumes import SliceEmbedder
from medsamkit.volumes.config import open_volume_dataset
from medsamkit.volumes.engine import EngineSettings, VolumeEngine
from medsamkit.volumes.protocol import click_auc, run_class

PREVIOUS = {"max_growth": 3.0, "agree": 0.9, "reach": 2}  # the engine's settings before this grid
GRID = [PREVIOUS, {**PREVIOUS, "max_growth": 2.0}, {"max_growth": 2.0, "agree": 0.9, "reach": 4},
        {"max_growth": 2.0, "agree": 0.95, "reach": 2}, {"max_growth": 2.0, "agree": 0.98, "reach": 2},
        {"max_growth": 2.0, "agree": 0.95, "reach": 1}, {"max_growth": 2.0, "agree": 0.95, "reach": 3},
        {"max_growth": 2.0, "agree": 0.95, "reach": 4}, {"max_growth": 2.0, "agree": 0.98, "reach": 3},
        {"max_growth": 1.5, "agree": 0.95, "reach": 3},
        # the output answering the object (``head_margin``, None: the single output) and its re-propagation cap
        {"head_margin": None}, {"head_margin": 0.0}, {"head_margin": 0.1}, {"head_regrow": 0.0},
        {"head_regrow": 1.2}]


def score(curve: list[float]) -> float:
    """The choice criterion of one volume's Dice curve (step 0 the box): final Dice + DSC AUC / 4."""
    return curve[-1] + click_auc(curve[1:]) / 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="builtin:lung-gtv")
    ap.add_argument("--threads", type=int, default=2)
    add_smoke(ap)
    args = ap.parse_args()
    tmp = apply_smoke(args, ())
    grid, clicks, window = GRID, 5, None
    if tmp is not None:
        args.data, window, grid, clicks = resliced_folder(tmp / "volumes", ["axial"], rows=3), CT_WINDOW, GRID[:2], 1
    setup(threads=args.threads)  # the CLI's allocator setting and thread count
    predictor = Predictor(load_model("litemedsam"))
    curves: dict[int, dict[str, list[float]]] = {i: {} for i in range(len(grid))}
    names = []
    for case in open_volume_dataset(args.data, window).items():
        embedder = SliceEmbedder(predictor, case.image, False, case.name)  # shared by every setting
        truth = case.label == 1
        names.append(case.name)
        for i, setting in enumerate(grid):
            rows = run_class(VolumeEngine(embedder, EngineSettings(**setting)), truth, case.spacing,
                             object_rng(0, name_key(case.name), 1), clicks=clicks)
            curves[i][case.name] = [float(r["dice"]) for r in rows]
    settings = []
    for i, setting in enumerate(grid):
        mean = np.mean([curves[i][n] for n in names], 0)
        settings.append({"settings": setting, "mean_dice_by_step": np.round(mean, 4).tolist(),
                         "score": round(float(np.mean([score(curves[i][n]) for n in names])), 4),
                         "never_falls": bool((np.diff(mean) >= 0).all()),
                         "per_volume": {n: np.round(curves[i][n], 4).tolist() for n in names}})
    held = []
    for n in names if len(names) > 1 else []:
        best = max(range(len(grid)), key=lambda i: np.mean([score(curves[i][m]) for m in names if m != n]))
        held.append({"volume": n, "chosen": grid[best], "dice_by_step": np.round(curves[best][n], 4).tolist()})
    loo = np.mean([h["dice_by_step"] for h in held], 0).round(4).tolist() if held else None
    best_all = max(range(len(grid)), key=lambda i: np.mean([score(curves[i][n]) for n in names]))
    print(json.dumps({"data": args.data, "smoke": bool(args.smoke), "threads": args.threads,
                      "load_avg": os.getloadavg(), "clicks": clicks, "defaults": asdict(EngineSettings()),
                      "best_on_all_volumes": grid[best_all],
                      "best_never_falling": next((g["settings"] for g in sorted(settings, key=lambda g: -g["score"])
                                                  if g["never_falls"]), None), "grid": settings,
                      "leave_one_volume_out": held, "leave_one_volume_out_mean_dice_by_step": loo}, indent=1))


if __name__ == "__main__":
    main()
