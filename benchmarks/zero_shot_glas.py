"""Zero-shot LiteMedSAM on GlaS 2015 test A (large glands, data the model was not tuned on) beside the
random-walker baseline, with evaluate's default view rule and the same simulated prompts for both.

Writes benchmarks/results/zero_shot_glas.json: per (method, prompt mode) Dice/IoU mean and median, n,
prompts/s; the IoU-by-clicks curve of iter5; seconds per method. Resumable (rerun with the same --out).
Usage: MEDSAMKIT_THREADS=1 python benchmarks/zero_shot_glas.py [--out runs/zero_shot_glas] [--max-images N]
(--smoke: one image, box prompts, in a temporary folder)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _shared import REPO, add_smoke, apply_smoke, require_shared, shared_dir
from medsamkit.core.runtime import setup
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate

MODES = "box,box+5,jitter+5,center,iter5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/zero_shot_glas")
    ap.add_argument("--max-images", type=int, default=None, help="first N of the 60 test A images")
    ap.add_argument("--prompts", default=MODES)
    ap.add_argument("--results", default=str(REPO / "benchmarks/results/zero_shot_glas.json"))
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, ("out", "results"), max_images=1, prompts="box")
    base = shared_dir()
    require_shared(base if base and (base / "data/glas/testA/images").is_dir() else None,
                   "GlaS test A (shared/data/glas/testA)")
    setup()
    cfg = EvaluateConfig(data=str(base / "data/glas/testA"), out=args.out, prompts=args.prompts,
                         max_images=args.max_images, figures=False)
    t0 = time.perf_counter()
    s = evaluate(cfg)
    result = {
        "data": "shared/data/glas/testA", "config": {"prompts": cfg.prompts, "max_images": cfg.max_images,
                                                    "tile_size": cfg.tile_size, "seed": cfg.seed},
        "images": s["images"], "objects": s["objects"], "tiles": s["tiles"],
        "wall_seconds_this_run": round(time.perf_counter() - t0, 1), "methods": s["methods"],
        "table": {f"{r['method']}:{r['mode']}": {"dice_mean": r["dice"]["mean"], "dice_median": r["dice"]["median"],
                                                 "iou_mean": r["iou"]["mean"], "n": r["dice"]["n"],
                                                 "prompts_per_s": r["prompts_per_s"]} for r in s["table"]},
        "iou_by_clicks": s["click_curves"],
    }
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
