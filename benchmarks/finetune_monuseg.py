"""Decoder fine-tuning of LiteMedSAM on MoNuSeg train, then zero-shot vs fine-tuned Dice on MoNuSeg test.

Usage: ``python benchmarks/finetune_monuseg.py [--data MONUSEG_ROOT] [--out FOLDER] [options]``.
MONUSEG_ROOT holds train/ and test/ (images/ + labels/); by default shared/data/monuseg beside the checkout
or under $MEDSAMKIT_SHARED; when absent the script prints a JSON line saying so and exits 0.
The defaults are the full run (< 1 hour on 2 CPU cores: the train tiles are embedded once into a cache,
decoder training then runs on cached embeddings). A quick look (~3 minutes on an idle machine):
``--max-images 2 --max-objects 16 --epochs 1 --test-images 1 --eval-objects 10``; ``--smoke`` is smaller still
(whole images, 4 nuclei, a temporary folder).
Prints one JSON document (also written to OUT/result.json); reruns with the same --out resume.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from _shared import add_smoke, apply_smoke, monuseg_dir, require_shared
from medsamkit.core.runtime import setup
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate
from medsamkit.training import FinetuneConfig, finetune

REPO = Path(__file__).resolve().parents[1]
EVAL_MODES = "box,center,random1,iter3"
POINT_MODES = ("center", "random1", "iter3")
TARGET_POINT_DICE = 0.70


def default_root() -> Path:
    """shared/data/monuseg under $MEDSAMKIT_SHARED, else beside the checkout."""
    return monuseg_dir() or REPO.parent / "shared" / "data" / "monuseg"


def mean_dice(summary: dict) -> dict[str, float | None]:
    """Mean final-step Dice per prompt mode of the model rows of an evaluate summary."""
    return {row["mode"]: row["dice"]["mean"] for row in summary["table"] if row["method"] == "model"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="MoNuSeg root with train/ and test/")
    ap.add_argument("--out", type=Path, default=Path("bench-out/finetune_monuseg"))
    ap.add_argument("--max-images", type=int, default=None, help="training images (default: all 30)")
    ap.add_argument("--max-objects", type=int, default=80, help="nuclei per training image and epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    ap.add_argument("--val-objects", type=int, default=16, help="nuclei per validation image")
    ap.add_argument("--test-images", type=int, default=None, help="test images (default: all 14)")
    ap.add_argument("--eval-objects", type=int, default=40, help="nuclei per test image (seeded choice)")
    ap.add_argument("--prompts", default="box,jitter+5,center,random1,iter3", help="training prompt modes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--progress", action="store_true", help="progress bars on stderr even when it is not a terminal")
    ap.add_argument("--tile", type=int, default=None, help="training tile size (default: auto; 0: whole images)")
    add_smoke(ap)
    args = ap.parse_args(argv)
    apply_smoke(args, ("out",), max_images=2, max_objects=4, epochs=1, val_objects=4, test_images=1, eval_objects=4,
                prompts="box,center", tile=0)
    root = args.data or default_root()
    both = (root / "train" / "images").is_dir() and (root / "test" / "images").is_dir()
    require_shared(root if both else None, f"MoNuSeg train and test ({root})")
    setup(threads=args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    run = out / "run"
    train = finetune(FinetuneConfig(
        data=[str(root / "train")], out=str(run), mode="decoder", prompts=args.prompts, epochs=args.epochs,
        lr=args.lr, lr_schedule=args.lr_schedule, batch_size=args.batch_size, max_images=args.max_images,
        max_objects=args.max_objects, tile_size=args.tile,
        val_objects=args.val_objects, seed=args.seed, cache=str(out / "cache_train"),
        show_progress=args.progress or sys.stderr.isatty(),
    ))
    t_train = time.perf_counter() - t0

    def run_eval(name: str, model: str) -> tuple[dict, float]:
        t = time.perf_counter()
        summary = evaluate(EvaluateConfig(
            data=str(root / "test"), out=str(out / name), prompts=EVAL_MODES, model=model,
            max_images=args.test_images, max_objects=args.eval_objects, seed=args.seed, baseline=False,
            figures=False, cache=str(out / "cache_test"), show_progress=args.progress or sys.stderr.isatty(),
        ))
        return summary, time.perf_counter() - t

    zero, t_zero = run_eval("eval_zero_shot", "litemedsam")
    tuned, t_tuned = run_eval("eval_finetuned", str(run / "best.pt"))  # same encoder: test embeddings cached
    zs, ft = mean_dice(zero), mean_dice(tuned)
    points = [ft.get(m) for m in POINT_MODES]
    result = {
        "benchmark": "finetune_monuseg (decoder mode, LiteMedSAM)",
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train": {k: train.get(k) for k in ("train_images", "val_images", "train_objects", "train_tiles",
                                            "epochs_done", "steps", "best_epoch", "best_score", "parameters", "embed_seconds",
                                            "last", "cache")},
        "test": {"images": zero["images"], "objects": zero["objects"], "tiles": zero["tiles"]},
        "dice_zero_shot": zs,
        "dice_finetuned": ft,
        "dice_gain": {m: (None if zs.get(m) is None or ft.get(m) is None else round(ft[m] - zs[m], 4)) for m in ft},
        "point_target": TARGET_POINT_DICE,
        "point_modes_reach_target": all(p is not None and p >= TARGET_POINT_DICE for p in points),
        "seconds": {"finetune": round(t_train, 1), "eval_zero_shot": round(t_zero, 1),
                    "eval_finetuned": round(t_tuned, 1), "total": round(time.perf_counter() - t0, 1)},
        # ru_maxrss is in KiB on Linux
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    text = json.dumps(result, indent=2)
    (out / "result.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
