"""Zero-shot LiteMedSAM with simulated prompts on builtin:lung-gtv and the MoNuSeg test split (issue 3).

Prints JSON: per dataset, the summary table (Dice/IoU mean/median/n per prompt mode, model and random-walker
baseline), the IoU-by-clicks curve (iter9 steps 1..9 = iter1..iter9), and the docs/facts.md reference values.
Usage: python benchmarks/zero_shot.py [--out runs/zero_shot] [--monuseg PATH] [--max-images 3] [--max-objects 60]
Resumable: rerun with the same --out to continue. --smoke: one MoNuSeg image (3 nuclei; one lung-gtv volume when
shared/ is absent), box and iter2, in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _shared import add_smoke, apply_smoke, monuseg_dir
from medsamkit.core.runtime import setup
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate

MODES = "box,box+5,jitter+5,center,random1,random3,iter9"
REFERENCE = {"lung-gtv": {"box": 0.786, "box+5": 0.841}, "monuseg": {"box": 0.861}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/zero_shot")
    ap.add_argument("--monuseg", default=None, help="MoNuSeg test folder (images/ + labels/)")
    ap.add_argument("--max-images", type=int, default=3, help="MoNuSeg images")
    ap.add_argument("--max-objects", type=int, default=60, help="nuclei per MoNuSeg image (seeded choice)")
    ap.add_argument("--prompts", default=MODES)
    ap.add_argument("--skip", default="", help="comma list of datasets to skip (lung-gtv, monuseg)")
    ap.add_argument("--lung-volumes", type=int, default=None, help="first N lung-gtv volumes (default: all 4)")
    add_smoke(ap)
    args = ap.parse_args()
    setup()  # as the CLI: the allocator setting, MEDSAMKIT_THREADS or all cores
    if apply_smoke(args, ("out",), max_images=1, max_objects=3, prompts="box,iter2", lung_volumes=1):
        args.skip = "lung-gtv" if args.monuseg or monuseg_dir("test") else "monuseg"  # one dataset is enough
    runs = {"lung-gtv": EvaluateConfig(data="builtin:lung-gtv", out=f"{args.out}/lung-gtv", prompts=args.prompts,
                                       max_images=args.lung_volumes)}
    mon = Path(args.monuseg) if args.monuseg else monuseg_dir("test")
    if mon is not None:
        runs["monuseg"] = EvaluateConfig(data=str(mon), out=f"{args.out}/monuseg", prompts=args.prompts,
                                         max_images=args.max_images, max_objects=args.max_objects, tile_size=256)
    result = {}
    for name, cfg in runs.items():
        if name in args.skip.split(","):
            continue
        t0 = time.perf_counter()
        s = evaluate(cfg)
        result[name] = {
            "config": {"data": cfg.data, "prompts": cfg.prompts, "max_images": cfg.max_images,
                       "max_objects": cfg.max_objects, "tile_size": cfg.tile_size, "seed": cfg.seed},
            "images": s["images"], "objects": s["objects"], "images_per_s": s["images_per_s"],
            "wall_seconds_this_run": round(time.perf_counter() - t0, 1),
            "table": {f"{r['method']}:{r['mode']}": {"dice_mean": r["dice"]["mean"], "dice_median": r["dice"]["median"],
                                                     "iou_mean": r["iou"]["mean"], "n": r["dice"]["n"],
                                                     "prompts_per_s": r["prompts_per_s"]} for r in s["table"]},
            "iou_by_clicks": s["click_curves"],
            "reference_dice": REFERENCE.get(name, {}),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
