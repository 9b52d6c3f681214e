"""`medsamkit fit-clicks` measured: the click search's ranking fitted to a training split, scored on its test split.

GlaS and MoNuSeg: fit on the training split (GlaS train, MoNuSeg train), then `evaluate` the test split (GlaS test A,
MoNuSeg test: the data and views of benchmarks/clicks.py) three times in the same run, with the default ranking,
the fitted one (`--click-ranker`), and the fitted one served coarse to fine (its file with ``refine_sides`` 2:
fewer boxes per click), clicks only (center, random1, iter5). A rerun reuses the fits' samples (``samples_reused``). builtin:lung-gtv has no training split: its
figure is fit-clicks' own cross-validation by patient volume (--lung-folds 4: leave one volume out), the IoU of
the first answer of the fitted ranking against the default search's on the held-out volume.

Prints JSON and writes benchmarks/results/fit_clicks.json.
Usage: python benchmarks/fit_clicks.py [--glas-train 16] [--monuseg-train 4] [--glas-test 8] [--monuseg-test 2]
       [--max-objects 40] [--lung-folds 4] [--out runs/fit_clicks] [--smoke]
(--smoke: 2 GlaS train images and 1 test image, 3 objects each, no MoNuSeg or lung, in a temporary folder)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from _shared import REPO, add_smoke, apply_smoke, monuseg_dir, require_shared, shared_dir
from medsamkit.core.runtime import setup
from medsamkit.evaluation.click_ranking import ClickRankingConfig, fit_click_ranking
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate

MODES = "center,random1,iter5"


def fitted(data: str, out: Path, images: int | None, max_objects: int, folds: int = 2, **kw) -> dict:
    """fit-clicks on ``data``: its result (ranking, chosen, cross-validation) and seconds."""
    t0, reused = time.perf_counter(), (out / "samples").is_dir()
    result = fit_click_ranking(ClickRankingConfig(data=data, out=str(out), max_images=images, max_objects=max_objects,
                                                  folds=folds, show_progress=False, **kw))
    keep = ("chosen", "images", "sources", "prompts", "cross_validation", "ranker", "offset", "reach", "refine_sides")
    return {**{k: result[k] for k in keep}, "seconds": round(time.perf_counter() - t0, 1), "samples_reused": reused}


def coarse_to_fine(ranking: Path) -> str:
    """The same fitted ranking served coarse to fine (squares, then other aspects at the 2 best sides), as
    `fit-clicks --coarse-to-fine` writes it: fewer boxes per click than the one-call search the cross-validation
    scored; written beside it."""
    spec = json.loads(ranking.read_text())
    target = ranking.with_name("ranking_coarse_to_fine.json")
    target.write_text(json.dumps({**spec, "refine_sides": 2 if spec["chosen"] == "fitted" else spec["refine_sides"]},
                                 indent=1))
    return str(target)


def scored(data: str, out: Path, ranking: str | None, **kw) -> dict:
    """evaluate's clicks-only rows on ``data`` (a fresh folder), with the default ranking or ``ranking``."""
    shutil.rmtree(out, ignore_errors=True)
    s = evaluate(EvaluateConfig(data=data, out=str(out), prompts=MODES, clicks="search", click_ranker=ranking,
                                baseline=False, figures=False, show_progress=False, **kw))
    rows = {r["mode"]: r for r in s["table"] if r["method"] == "model"}
    return {"ranking": s["clicks"]["ranking"], "images": s["images"], "objects": s["objects"],
            **{f"{m}_dice": rows[m]["dice"]["mean"] for m in rows},
            **{f"{m}_prompts_per_s": rows[m]["prompts_per_s"] for m in rows}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glas-train", type=int, default=16)
    ap.add_argument("--monuseg-train", type=int, default=4)
    ap.add_argument("--glas-test", type=int, default=8, help="first N GlaS test A images (as benchmarks/clicks.py)")
    ap.add_argument("--monuseg-test", type=int, default=2, help="first N MoNuSeg test images (as clicks.json)")
    ap.add_argument("--max-objects", type=int, default=40)
    ap.add_argument("--lung-folds", type=int, default=4, help="0: skip builtin:lung-gtv")
    ap.add_argument("--out", default="runs/fit_clicks")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "fit_clicks.json"))
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, ("out", "results"), glas_train=2, glas_test=1, monuseg_train=0, max_objects=3, lung_folds=0)
    setup(threads=2)  # the CLI's allocator setting and thread count
    shared = require_shared(shared_dir(), "GlaS / MoNuSeg")
    out = Path(args.out)
    result: dict = {"threads": 2, "load_avg_1min": round(os.getloadavg()[0], 2), "max_objects": args.max_objects}
    splits = {"glas": (shared / "data/glas/train", args.glas_train, shared / "data/glas/testA", args.glas_test, {})}
    if args.monuseg_train:
        splits["monuseg"] = (monuseg_dir("train"), args.monuseg_train, monuseg_dir("test"), args.monuseg_test,
                             {"tile_size": 256})
    for name, (train, n_train, test, n_test, view) in splits.items():
        fit = fitted(str(train), out / name / "fit", n_train, args.max_objects)
        ranking = out / name / "fit" / "ranking.json"
        kw = {"max_images": n_test, "max_objects": args.max_objects, **view}
        result[name] = {"train": f"{Path(train).parent.name}/{Path(train).name} ({n_train} images)",
                        "test": f"{Path(test).parent.name}/{Path(test).name} ({n_test} images)", "fit": fit,
                        "default": scored(str(test), out / name / "default", None, **kw),
                        "fitted": scored(str(test), out / name / "fitted", str(ranking), **kw),
                        "fitted_coarse_to_fine": scored(str(test), out / name / "fitted_c2f", coarse_to_fine(ranking),
                                                        **kw)}
        print(json.dumps({name: result[name]}), flush=True)
    if args.lung_folds:
        result["lung-gtv"] = {"note": "no training split: cross-validation by patient volume (leave one out)",
                              "fit": fitted("builtin:lung-gtv", out / "lung" / "fit", None, args.max_objects,
                                            folds=args.lung_folds)}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
