"""Which of the model's outputs answers a box best in 2D: the single output (what every 2D box prompt uses) against
the multimask output whose answer's tight box fits the given box best (``prompts.boxes.fitting_outputs``), taken when it
fits better than the single output's by more than a margin (0, 0.05 as the 3D engine, 0.1), and the best output per
object by Dice (an oracle). One box per object, the truth's tight box, the whole image encoded once (not evaluate's
per-object windows, so the single output's Dice differs from evaluate's box rows). Tuning splits (GlaS train, the
first 8 images; MoNuSeg train, the first 3) and held-out ones (GlaS test A, MoNuSeg test), and the CT slices of
builtin:lung-gtv with a GTV of at least 20 px. Then `evaluate --prompts box` itself (public API, its own tiling)
with ``--box-output single`` and ``fit`` on the held-out splits: mean box Dice / IoU and prompts per second.

Usage: python benchmarks/box_outputs.py [--max-objects 40] [--smoke]. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from _shared import add_smoke, apply_smoke, require_shared, shared_dir
from medsamkit.core.runtime import setup
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate
from medsamkit.io.datasets import open_dataset
from medsamkit.metrics import dice
from medsamkit.models import load_model
from medsamkit.predictor import Predictor
from medsamkit.prompts import tight_box
from medsamkit.prompts.boxes import fitting_outputs
from medsamkit.volumes import slice_input

MARGINS = (0.0, 0.05, 0.1)


def images(spec: str, limit: int | None):
    """(name, image, list of object masks) of a SPEC: instances of 2D images, GTV slices (>= 20 px) of volumes."""
    for n, case in enumerate(open_dataset(spec).items()):
        if limit is not None and n >= limit:
            return
        if case.image.ndim == 3 and case.label.ndim == 3 and case.image.shape[-1] not in (3, 4):
            for z in range(len(case.label)):
                gtv = case.label[z] == 1
                if gtv.sum() >= 20:
                    yield f"{case.name}#{z}", slice_input(case.image, z), [gtv]
            continue
        ids = [v for v in np.unique(case.label) if v]
        yield case.name, case.image, [case.label == v for v in ids]


def run(predictor: Predictor, spec: str, limit: int | None, max_objects: int) -> dict:
    """Mean box Dice of each choice over the objects (>= 20 px, at most ``max_objects`` per image, seeded)."""
    dices: dict[str, list[float]] = {"single": [], "oracle": [], **{f"fit_margin_{m}": [] for m in MARGINS}}
    chose = {m: 0 for m in MARGINS}
    for name, image, masks in images(spec, limit):
        masks = [m for m in masks if m.sum() >= 20]
        if len(masks) > max_objects:
            keep = np.random.default_rng(0).choice(len(masks), max_objects, replace=False)
            masks = [masks[i] for i in sorted(keep)]
        if not masks:
            continue
        predictor.set_image(image, name)
        boxes = np.stack([tight_box(m) for m in masks]).astype(np.float32)
        single, multi = predictor.predict(boxes=boxes), predictor.predict(boxes=boxes, multimask=True)
        for k, truth in enumerate(masks):
            scores = [dice(o, truth) for o in (single.masks[k, 0], *multi.masks[k])]
            dices["single"].append(scores[0])
            dices["oracle"].append(max(scores))
        for m in MARGINS:
            chosen, heads = fitting_outputs(boxes, single, multi, m)
            chose[m] += int((heads >= 0).sum())
            dices[f"fit_margin_{m}"] += [dice(c, t) for c, t in zip(chosen.masks[:, 0], masks)]
    count = len(dices["single"])
    return {"data": spec, "objects": count, **{k: round(float(np.mean(v)), 4) for k, v in dices.items()},
            "multimask_taken": {str(m): chose[m] for m in MARGINS}}


def evaluate_box(predictor: Predictor, spec: str, limit: int | None, max_objects: int | None, work: Path) -> dict:
    """``evaluate --prompts box`` with each box output: mean Dice / IoU of the box mode and its prompts/s."""
    out = {}
    for choice in ("single", "fit"):
        summary = evaluate(EvaluateConfig(data=spec, out=str(work / f"{Path(spec).name}_{choice}"), prompts="box",
                                          max_images=limit, max_objects=max_objects, baseline=False, figures=False,
                                          show_progress=False, cache=str(work / "cache"), box_output=choice),
                           predictor)
        row = next(r for r in summary["table"] if r["method"] == "model" and r["mode"] == "box")
        out[choice] = {"dice": row["dice"]["mean"], "iou": row["iou"]["mean"], "objects": row["dice"]["n"],
                       "prompts_per_s": row["prompts_per_s"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-objects", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    add_smoke(ap)
    args = ap.parse_args()
    smoke = apply_smoke(args, (), max_objects=3) is not None
    data = require_shared(shared_dir(), "GlaS and MoNuSeg") / "data"
    splits = [("tuning", str(data / "glas" / "train"), 8), ("tuning", str(data / "monuseg" / "train"), 3),
              ("held_out", str(data / "glas" / "testA"), None), ("held_out", str(data / "monuseg" / "test"), None),
              ("held_out", "builtin:lung-gtv", None)]
    if smoke:
        splits = [("tuning", str(data / "glas" / "train"), 1)]
    setup(threads=args.threads)
    predictor = Predictor(load_model("litemedsam"))
    name = {spec: os.path.relpath(spec, data) if spec.startswith(str(data)) else spec for _, spec, _ in splits}
    rows = [{"split": split, **run(predictor, spec, limit, args.max_objects), "data": name[spec]}
            for split, spec, limit in splits]
    with tempfile.TemporaryDirectory(prefix="box-outputs-") as work:
        evaluated = {name[spec]: evaluate_box(predictor, spec, limit, 3 if smoke else None, Path(work))
                     for split, spec, limit in splits if split == "held_out" or smoke}
    print(json.dumps({"smoke": smoke, "threads": args.threads, "load_avg": os.getloadavg(),
                      "max_objects": args.max_objects, "margins": list(MARGINS), "rows": rows,
                      "evaluate_box": evaluated}, indent=1))


if __name__ == "__main__":
    main()
