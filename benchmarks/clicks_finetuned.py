"""Clicks on a decoder fine-tuned for points (issue 26): does ``--clicks auto`` serve the better of ``native``
(the fine-tuned decoder reads the points) and ``search`` (boxes searched around the clicks, corrections by the
model's own candidates)? ``mixed`` (clicks given together read by the decoder, each later click a search
correction) is the third choice.

Per dataset (MoNuSeg train -> test, GlaS train -> test A): one decoder-only run trained with the prompt modes
below for ``--budget-cpu`` CPU seconds of steps (lr 1e-4: the PEFT table's choice), validated every epoch on a
split of the training images; its validation runs the click modes under every strategy and saves the best
one (by mean click-mode Dice) with the weights (training.validate). Then the test images under
``--clicks native``, ``search``, ``mixed`` and ``auto``. Targets: auto's mean click-mode Dice >= the better of
native and search on the test images (choice made on validation only).

Prints JSON and writes benchmarks/results/clicks_finetuned.json. Resumable: each finished run and evaluation is
kept in OUT/results.json and skipped on a rerun.
Usage: python benchmarks/clicks_finetuned.py [--datasets monuseg,glas] [--budget-cpu 300] [--out FOLDER]
(--smoke: GlaS, a tiny budget and sizes, a temporary folder)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from _shared import REPO, add_smoke, apply_smoke, require_shared, shared_dir
from medsamkit.core.results import read_rows
from medsamkit.core.runtime import setup
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate
from medsamkit.training import FinetuneConfig
from peft_table import EVAL_MODES, SPLITS, Table, mean_dice, run_training, validation_curve

STRATEGIES = ("native", "search", "mixed", "auto")
CLICK_MODES = [m for m in EVAL_MODES.split(",") if m != "box"]
SIZES = {"monuseg": {"test_images": 5, "eval_objects": 10}, "glas": {"test_images": 15, "eval_objects": 6}}


def train(args, table: Table, ds: str, train_dir: Path) -> dict:
    """The decoder-only run of ``ds`` (trained once; its summary and validation curve kept; ``best``: its
    checkpoint, relative to --out)."""
    if table.has("runs", ds):
        return table.doc["runs"][ds]
    out = args.out / ds / "run"
    shutil.rmtree(out, ignore_errors=True)  # an interrupted run starts again with its whole budget
    cfg = FinetuneConfig(
        data=[str(train_dir)], out=str(out), mode="decoder", use_cache=False, prompts=EVAL_MODES, lr=1e-4, epochs=10_000,
        validate_every=1, max_cpu_seconds=args.budget_cpu, batch_size=args.batch_size, max_objects=args.max_objects,
        val_objects=args.val_objects, max_images=args.max_images, seed=args.seed, save_every=0,
        show_progress=False)
    s = run_training(cfg, args.threads)
    curve = validation_curve(out / "metrics.csv")
    best = s["last"] if s["best_epoch"] == s["epochs_done"] else next(
        (row for row in curve if row["epoch"] == s["best_epoch"]), {})
    run = {"best": str((out / "best.pt").relative_to(args.out)), "steps": s["steps"], "epochs": s["epochs_done"],
           "best_epoch": s["best_epoch"], "train_cpu_seconds": s.get("train_cpu_seconds"),
           "validate_cpu_seconds": s.get("validate_cpu_seconds"), "val_images": s["val_images"],
           "val_objects": s["val_objects"], "curve": curve, "chosen_at_best": _choice(out, s["best_epoch"]),
           "val_at_best": {k: v for k, v in best.items() if k.startswith("val_dice_")}}
    table.put("runs", ds, run)
    return run


def _choice(out: Path, epoch: int) -> dict:
    """The click strategy the run's validation chose at ``epoch`` and each validated strategy's mean click Dice."""
    for row in read_rows(out / "metrics.csv"):
        if int(row["epoch"]) == epoch:
            return {"clicks": row.get("clicks"), **{s: float(row[f"val_clicks_{s}"]) for s in STRATEGIES[:-1]
                                                    if row.get(f"val_clicks_{s}")}}
    return {}


def test(args, table: Table, ds: str, strategy: str, model: str, test_dir: Path) -> dict:
    """The run's best weights on the test images with one click strategy."""
    key = f"{ds}/{strategy}"
    if table.has("test", key):
        return table.doc["test"][key]
    t = time.perf_counter()
    s = evaluate(EvaluateConfig(
        data=str(test_dir), out=str(args.out / ds / f"eval_{strategy}"), prompts=EVAL_MODES, model=model,
        clicks=strategy, max_images=args.sizes[ds]["test_images"], max_objects=args.sizes[ds]["eval_objects"],
        seed=args.seed, baseline=False, figures=False, show_progress=False))
    dice = mean_dice(s)
    result = {"served": s["clicks"], "dice": dice, "click_mean": round(sum(dice[m] for m in CLICK_MODES)
                                                                      / len(CLICK_MODES), 4),
              "objects": s["objects"], "seconds": round(time.perf_counter() - t, 1)}
    table.put("test", key, result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="monuseg,glas")
    ap.add_argument("--out", type=Path, default=Path("bench-out/clicks_finetuned"))
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks/results/clicks_finetuned.json")
    ap.add_argument("--budget-cpu", type=float, default=300.0, help="CPU seconds of training steps per run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-objects", type=int, default=32, help="objects per training image and epoch")
    ap.add_argument("--max-images", type=int, default=None, help="training images (default: all)")
    ap.add_argument("--val-objects", type=int, default=4, help="objects per validation image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    add_smoke(ap)
    args = ap.parse_args(argv)
    args.sizes = SIZES
    if apply_smoke(args, ("out", "results"), datasets="glas", budget_cpu=4.0, max_images=3, max_objects=2,
                   batch_size=2, val_objects=2):
        args.sizes = {"glas": {"test_images": 1, "eval_objects": 2}}
    wanted = [d.strip() for d in args.datasets.split(",") if d.strip()]
    base = shared_dir()
    found = base is not None and all((base / "data" / SPLITS[d][1] / "images").is_dir() for d in wanted)
    require_shared(base if found else None, f"{', '.join(wanted)} train and test")
    setup(threads=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    table = Table(args.out / "results.json", {"budget_cpu": args.budget_cpu, "lr": 1e-4, "modes": EVAL_MODES,
                                              "sizes": args.sizes, "seed": args.seed, "threads": args.threads})
    checks = {}
    for ds in wanted:
        train_dir, test_dir = (base / "data" / p for p in SPLITS[ds])
        run = train(args, table, ds, train_dir)
        got = {s: test(args, table, ds, s, str(args.out / run["best"]), test_dir) for s in STRATEGIES}
        better = max(got["native"]["click_mean"], got["search"]["click_mean"])
        checks[ds] = {"auto serves": got["auto"]["served"], "chosen on validation": run["chosen_at_best"],
                      "auto >= better of native and search (mean click Dice)": got["auto"]["click_mean"] >= better,
                      "auto >= best of native, search and mixed (mean click Dice)":
                          got["auto"]["click_mean"] >= max(better, got["mixed"]["click_mean"])}
    table.put("checks", None, checks)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(table.doc, indent=2) + "\n")
    print(json.dumps(table.doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
