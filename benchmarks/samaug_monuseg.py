"""SAMAug on MoNuSeg (paper 000, Table 1): the same U-Net trained with and without SAM priors, AJI on test.

Example (the paper's schedule; needs priors from `medsamkit samaug priors` for both splits):
  python benchmarks/samaug_monuseg.py --train DATA/monuseg/train --test DATA/monuseg/test \\
      --priors-train PRIORS/train --priors-test PRIORS/test --iterations 50000 --lr-switch 30000 \\
      --seeds 0,1,2 --out runs/samaug_monuseg
Every run resumes from its last.pt; finished evaluations are reused. Prints and writes results.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from _shared import monuseg_dir
from medsamkit.samaug.unet_eval import UNetEvalConfig, evaluate
from medsamkit.samaug.unet_train import UNetConfig, train

PAPER_AJI = {"baseline_aji": 58.36, "samaug_aji": 64.30}  # U-Net, 50k iterations, AJI x 100


def _arm(args: argparse.Namespace, seed: int, arm: str, priors_train: str | None,
         priors_test: str | None) -> dict:
    """Train (or resume) one arm for one seed, then evaluate it on the test split."""
    run = Path(args.out) / f"seed{seed}" / arm
    cfg = UNetConfig(data=args.train, out=str(run), priors=priors_train, iterations=args.iterations,
                     lr_switch=args.lr_switch, batch_size=args.batch_size, crop=args.crop, seed=seed,
                     max_images=args.train_images, threads=args.threads, device=args.device,
                     checkpoint_every=args.checkpoint_every, progress=not args.quiet)
    train(cfg)
    eval_dir = run / "eval-test"
    summary_path = eval_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    reusable = (summary.get("checkpoint_iteration") == args.iterations
                and summary.get("eval", {}).get("max_images") == args.test_images
                and summary.get("data") == args.test and summary.get("priors") == priors_test)
    if not reusable:
        summary = evaluate(UNetEvalConfig(run=str(run), data=args.test, priors=priors_test, out=str(eval_dir),
                                          max_images=args.test_images, threads=args.threads, device=args.device,
                                          progress=not args.quiet))
    return {"aji": 100 * summary["mean_aji"], "n_test": summary["n"],
            "train_iterations_per_second": _logged_speed(run / "metrics.csv")}


def _priors_stats(folder: str) -> dict:
    """What `medsamkit samaug priors` recorded for a folder: images, masks, seconds per image (median, max)."""
    index = Path(folder) / "index.json"
    if not index.is_file():
        return {}
    rows = [r for r in json.loads(index.read_text())["images"] if not r.get("skipped")]
    secs = [r["seconds"] for r in rows if r.get("seconds") is not None]
    return {"images": len(rows), "masks": sum(r["masks"] for r in rows),
            "seconds_per_image_median": round(statistics.median(secs), 1) if secs else None,
            "seconds_per_image_max": round(max(secs), 1) if secs else None}


def _logged_speed(metrics_csv: Path) -> float | None:
    """Iterations per second over the whole run, from the per-iteration wall-clock in metrics.csv."""
    with metrics_csv.open(newline="") as fh:
        seconds = [float(r["seconds"]) for r in csv.DictReader(fh) if r.get("seconds")]
    return round(len(seconds) / sum(seconds), 4) if seconds and sum(seconds) > 0 else None


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison for every seed; returns (and prints) the results dict."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default=None, help="MoNuSeg train SPEC (default: shared/data/monuseg/train)")
    p.add_argument("--test", default=None, help="MoNuSeg test SPEC (default: shared/data/monuseg/test)")
    p.add_argument("--priors-train", default=None, help="priors folder of the train images (omit: baseline only)")
    p.add_argument("--priors-test", default=None, help="priors folder of the test images")
    p.add_argument("--out", required=True, help="folder for all runs and results.json")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--lr-switch", type=int, default=None, help="lr 5e-4 -> 5e-5 here (default 60%%)")
    p.add_argument("--seeds", default="0", help="comma list, e.g. 0,1,2")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--train-images", type=int, default=None, help="use only the first N train images")
    p.add_argument("--test-images", type=int, default=None, help="evaluate only the first N test images")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for split in ("train", "test"):
        found = monuseg_dir(split)
        setattr(args, split, getattr(args, split) or (str(found) if found else None))
    if args.train is None or args.test is None:
        print(json.dumps({"skipped": "MoNuSeg not found (give --train/--test or set MEDSAMKIT_SHARED)"}))
        return {}
    if (args.priors_train is None) != (args.priors_test is None):
        p.error("give both --priors-train and --priors-test, or neither (baseline only)")
    seeds = [int(s) for s in args.seeds.split(",")]

    results: dict = {"unit": "AJI x 100 (mean over test images)", "iterations": args.iterations, "seeds": {}}
    for seed in seeds:
        row = {}
        base = _arm(args, seed, "baseline", None, None)
        row["baseline_aji"] = base["aji"]
        row["baseline_it_per_s"] = base["train_iterations_per_second"]
        if args.priors_train:
            aug = _arm(args, seed, "samaug", args.priors_train, args.priors_test)
            row["samaug_aji"] = aug["aji"]
            row["samaug_it_per_s"] = aug["train_iterations_per_second"]
        row["n_test"] = base["n_test"]
        results["seeds"][str(seed)] = row
    for key in ("baseline_aji", "samaug_aji"):
        values = [r[key] for r in results["seeds"].values() if key in r]
        if values:
            results.setdefault("mean", {})[key] = statistics.fmean(values)
    results["paper"] = PAPER_AJI
    if args.priors_train:
        results["priors"] = {"train": _priors_stats(args.priors_train), "test": _priors_stats(args.priors_test)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    json.dump(results, sys.stdout, indent=2)
    print()
    return results


if __name__ == "__main__":
    main()
