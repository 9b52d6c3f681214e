"""What the random-walker baseline adds to `evaluate` with default options on GlaS test A.

Runs the same images twice in one process: default options (baseline on) and ``--no-baseline``, each into
a fresh folder, and reports the wall-time ratio of the two runs and, from the baseline run alone (same
run, same conditions), (model + walker seconds) / model seconds.
Writes benchmarks/results/baseline_time.json.
Usage: MEDSAMKIT_THREADS=1 python benchmarks/baseline_time.py [--max-images 5] [--out runs/baseline_time]
(--smoke: one image, outputs in a temporary folder)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _shared import REPO, add_smoke, apply_smoke, require_shared, shared_dir
from medsamkit.core.runtime import setup
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate
from medsamkit.models import load_model
from medsamkit.predictor import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-images", type=int, default=5)
    ap.add_argument("--out", default="runs/baseline_time")
    ap.add_argument("--results", default=str(REPO / "benchmarks/results/baseline_time.json"))
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, ("out", "results"), max_images=1)
    base = shared_dir()
    require_shared(base if base and (base / "data/glas/testA/images").is_dir() else None,
                   "GlaS test A (shared/data/glas/testA)")
    setup()
    predictor = Predictor(load_model("litemedsam", device="cpu"))  # loaded once, outside both timings
    runs = {}
    for name, baseline in (("no_baseline", False), ("default", True)):
        out = Path(args.out) / name
        shutil.rmtree(out, ignore_errors=True)
        cfg = EvaluateConfig(data=str(base / "data/glas/testA"), out=str(out), max_images=args.max_images,
                             baseline=baseline, figures=False, show_progress=False)
        t0 = time.perf_counter()
        s = evaluate(cfg, predictor)
        runs[name] = {"wall_seconds": round(time.perf_counter() - t0, 1), "methods": s["methods"],
                      "images": s["images"], "objects": s["objects"],
                      "dice_mean": {f"{r['method']}:{r['mode']}": r["dice"]["mean"] for r in s["table"]}}
    m = runs["default"]["methods"]
    result = {
        "data": "shared/data/glas/testA", "prompts": EvaluateConfig.prompts, "max_images": args.max_images,
        "runs": runs,
        "wall_ratio_default_over_no_baseline": round(runs["default"]["wall_seconds"]
                                                     / runs["no_baseline"]["wall_seconds"], 3),
        "same_run_ratio_model_plus_walker_over_model": round(
            (m["model"]["seconds"] + m["random_walker"]["seconds"]) / m["model"]["seconds"], 3),
    }
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
