"""Clicks on the bundled box-only LiteMedSAM (issue 26): `evaluate` with --clicks native (the decoder reads the
points) and --clicks search (the default for this model: prompts.clicks) on the held-out splits, beside the
random walker with the same clicks.

Per dataset and strategy: box Dice/IoU, center / random1 / iter5 Dice, the mean IoU-by-click curves of
box+iter5 and iter9, Mazurowski's clicks to reach Dice 0.85 (iter9, capped at 9: an object that never gets
there counts 9) for model and walker, prompts/s of center and box, and each target of the issue as a check.
Splits: GlaS test A, MoNuSeg test, builtin:lung-gtv (the settings were chosen on GlaS train and MoNuSeg train).

Prints JSON and writes benchmarks/results/clicks.json. Resumable (rerun with the same --out).
Usage: python benchmarks/clicks.py [--out runs/clicks] [--glas-images 8] [--monuseg-images 3]
       [--max-objects 40] [--lung-volumes 4] [--datasets glas,monuseg,lung-gtv] [--strategies search,native]
       [--keep-others] (keep the results file's entries of datasets and strategies not rerun)
       [--click-ranker FILE] (a ranking file, e.g. benchmarks/search_settings/one_large_side.json: other candidate boxes)
(--smoke: one MoNuSeg image, 3 nuclei, box/center/iter2, in a temporary folder)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections import defaultdict
from pathlib import Path

from _shared import REPO, add_smoke, apply_smoke, monuseg_dir, shared_dir
from medsamkit.core.runtime import setup
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate

MODES = "box,center,random1,iter5,box+iter5,iter9"
CAP = 9


def clicks_to_reach(per_object: Path, method: str, mode: str, level: float = 0.85) -> float | None:
    """Mean number of clicks until an object's Dice reaches ``level`` (CAP when it never does)."""
    first: dict[tuple, int] = {}
    seen = set()
    with per_object.open(newline="") as fh:
        for r in csv.DictReader(fh):
            if r["method"] != method or r["mode"] != mode:
                continue
            key = (r["image"], r["tile"], r["object"])
            seen.add(key)
            if float(r["dice"]) >= level and key not in first:
                first[key] = int(r["step"])
    if not seen:
        return None
    return round(sum(min(first.get(k, CAP), CAP) for k in seen) / len(seen), 3)


def run_one(data: str, out: Path, clicks: str, baseline: bool, prompts: str, **kw) -> dict:
    cfg = EvaluateConfig(data=data, out=str(out), prompts=prompts, clicks=clicks, baseline=baseline,
                         figures=False, **kw)
    t0 = time.perf_counter()
    s = evaluate(cfg)
    table = {f"{r['method']}:{r['mode']}": r for r in s["table"]}

    def get(key: str, what: str = "dice") -> float | None:
        return table[key][what]["mean"] if key in table else None

    curves = s.get("click_curves", {}).get("model", {})
    walker = s.get("click_curves", {}).get("random_walker", {})
    return {
        "clicks": s["clicks"], "images": s["images"], "objects": s["objects"], "date": time.strftime("%Y-%m-%d"),
        "wall_seconds_this_run": round(time.perf_counter() - t0, 1),
        "box_dice": get("model:box"), "box_iou": get("model:box", "iou"),
        "center_dice": get("model:center"), "random1_dice": get("model:random1"),
        "iter5_dice": get("model:iter5"), "walker_iter5_dice": get("random_walker:iter5"),
        "box+iter5_iou": get("model:box+iter5", "iou"),
        "curve_box+iter5_iou": list(curves.get("box+iter5", {}).values()),
        "curve_iter9_iou": list(curves.get("iter9", {}).values()),
        "walker_curve_iter9_iou": list(walker.get("iter9", {}).values()),
        "clicks_to_0.85_iter9": clicks_to_reach(out / "per_object.csv", "model", "iter9"),
        "walker_clicks_to_0.85_iter9": clicks_to_reach(out / "per_object.csv", "random_walker", "iter9"),
        "prompts_per_s_box": table.get("model:box", {}).get("prompts_per_s"),
        "prompts_per_s_center": table.get("model:center", {}).get("prompts_per_s"),
    }


def targets(r: dict) -> dict:
    """The issue's targets, each True/False (None when a mode was not run)."""
    def at_least(a, b, f=1.0):
        return None if a is None or b is None else bool(a >= f * b)

    def never_falls(curve):
        return None if not curve else bool(all(b - a >= -0.005 for a, b in zip(curve, curve[1:])))

    return {
        "center >= 0.85 box": at_least(r["center_dice"], r["box_dice"], 0.85),
        "random1 >= 0.8 box": at_least(r["random1_dice"], r["box_dice"], 0.8),
        "iter5 >= 0.9 box": at_least(r["iter5_dice"], r["box_dice"], 0.9),
        "iter5 >= walker iter5": at_least(r["iter5_dice"], r["walker_iter5_dice"]),
        "box+iter5 IoU >= box IoU + 0.03": at_least(r["box+iter5_iou"], None if r["box_iou"] is None
                                                    else r["box_iou"] + 0.03),
        "box+iter5 curve never falls > 0.005": never_falls(r["curve_box+iter5_iou"]),
        "iter9 curve never falls > 0.005": never_falls(r["curve_iter9_iou"]),
        "clicks to 0.85 below walker": None if r["clicks_to_0.85_iter9"] is None else
        bool(r["clicks_to_0.85_iter9"] < r["walker_clicks_to_0.85_iter9"]),
        "center prompts/s >= 1/3 box": at_least(r["prompts_per_s_center"], r["prompts_per_s_box"], 1 / 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/clicks")
    ap.add_argument("--datasets", default="glas,monuseg,lung-gtv")
    ap.add_argument("--strategies", default="search,native")
    ap.add_argument("--prompts", default=MODES)
    ap.add_argument("--glas-images", type=int, default=8, help="first N of the 60 GlaS test A images")
    ap.add_argument("--monuseg-images", type=int, default=3, help="first N of the 14 MoNuSeg test images")
    ap.add_argument("--max-objects", type=int, default=40, help="objects per image (seeded choice)")
    ap.add_argument("--lung-volumes", type=int, default=4)
    ap.add_argument("--results", default=str(REPO / "benchmarks/results/clicks.json"))
    ap.add_argument("--keep-others", action="store_true",
                    help="keep the --results file's entries of the datasets and strategies not rerun (each entry says its run)")
    ap.add_argument("--click-ranker", default=None,
                    help="serve the search with this ranking file (evaluate's --click-ranker; with --out and "
                         "--results of its own)")
    add_smoke(ap)
    args = ap.parse_args()
    setup()  # as the CLI: the allocator setting, MEDSAMKIT_THREADS or all cores
    if apply_smoke(args, ("out", "results"), monuseg_images=1, max_objects=3, prompts="box,center,iter2",
                   strategies="search"):
        args.datasets = "monuseg" if monuseg_dir("test") else "lung-gtv"
        args.lung_volumes = 1
    shared = shared_dir()
    data = {"lung-gtv": ("builtin:lung-gtv", {"max_images": args.lung_volumes})}
    if shared is not None and (shared / "data/glas/testA/images").is_dir():
        data["glas"] = (str(shared / "data/glas/testA"), {"max_images": args.glas_images,
                                                          "max_objects": args.max_objects})
    if monuseg_dir("test") is not None:
        data["monuseg"] = (str(monuseg_dir("test")), {"max_images": args.monuseg_images,
                                                      "max_objects": args.max_objects, "tile_size": 256})
    result: dict = defaultdict(dict)
    if args.keep_others and Path(args.results).is_file():
        for name, entry in json.loads(Path(args.results).read_text()).items():
            if isinstance(entry, dict):
                rerun = name in args.datasets.split(",")
                result[name] = {s: r for s, r in entry.items() if not (rerun and s in args.strategies.split(","))}
    for name in args.datasets.split(","):
        if name not in data:
            result[name] = {"skipped": "data not found (shared/ absent)"}
            continue
        spec, kw = data[name]
        for strategy in args.strategies.split(","):
            r = run_one(spec, Path(args.out) / name / strategy, strategy, strategy == "search", args.prompts,
                        click_ranker=args.click_ranker, **kw)
            r["targets"] = targets(r) if strategy == "search" else {}
            result[name][strategy] = r
    result["load_avg_1min"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text + "\n")


if __name__ == "__main__":
    main()
