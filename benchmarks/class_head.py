"""Class head (term project, Table 4): one decoder fine-tuned with a class token on two object classes,
lung tumour (builtin:lung-gtv, CT) and nucleus (MoNuSeg train, H&E); per-class accuracy on held-out images.

Held out = the validation split of `medsamkit finetune`: whole patients for the lung volumes (one of four),
whole slides for MoNuSeg (6 of 30). The head is asked with the object's tight box.
Usage: python benchmarks/class_head.py [--out FOLDER] [--epochs 2] [--max-objects 24] [--cache FOLDER]
(--smoke: builtin:dsb-nuclei and 2 MoNuSeg images as the two classes, whole images, 4 objects, one epoch, in a
temporary folder)
Prints one JSON document (also OUT/result.json); rerunning with the same --out resumes the run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from _shared import add_smoke, apply_smoke, monuseg_dir, require_shared
from medsamkit.core.runtime import setup
from medsamkit.training import FinetuneConfig, finetune


def main(argv: list[str] | None = None) -> dict:
    """Train (or resume) the class-head run and print its held-out per-class accuracy."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out/class_head"))
    ap.add_argument("--monuseg-train", default=None, help="MoNuSeg train folder (default: shared/)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-objects", type=int, default=24, help="objects per training image and epoch")
    ap.add_argument("--val-objects", type=int, default=32, help="objects per held-out image")
    ap.add_argument("--cache", default=None, help="embedding cache folder (reuse finetune_monuseg's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-images", type=int, default=None, help="images / volumes per data set (default: all)")
    ap.add_argument("--tile", type=int, default=None, help="tile size (default: auto; 0: whole images)")
    ap.add_argument("--first", default="builtin:lung-gtv", help="the first class's data SPEC")
    add_smoke(ap)
    args = ap.parse_args(argv)
    apply_smoke(args, ("out",), epochs=1, max_objects=4, val_objects=4, max_images=2, tile=0,
                first="builtin:dsb-nuclei")
    monuseg = args.monuseg_train or str(require_shared(monuseg_dir("train"), "MoNuSeg train (shared/data/monuseg)"))
    setup(threads=args.threads)
    cfg = FinetuneConfig(data=[args.first, monuseg], out=str(args.out / "run"), mode="decoder",
                         class_head=True, epochs=args.epochs, max_objects=args.max_objects,
                         val_objects=args.val_objects, seed=args.seed, max_images=args.max_images,
                         tile_size=args.tile,
                         cache=args.cache or str(args.out / "cache"), show_progress=sys.stderr.isatty())
    t0 = time.perf_counter()
    summary = finetune(cfg)
    last = summary["last"]
    result = {
        "benchmark": "class_head (decoder mode + class token, LiteMedSAM)",
        "classes": summary["classes"],
        "held_out": summary["val_sources"],
        "held_out_objects": last.get("class_objects"),
        "class_accuracy": last.get("class_accuracy"),
        "overall_accuracy": last.get("val_class_accuracy"),
        "val_dice": {k[len("val_dice_"):]: v for k, v in last.items() if k.startswith("val_dice_")},
        "train_objects": summary["train_objects"], "epochs": summary["epochs_done"], "steps": summary["steps"],
        "parameters": summary["parameters"],
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    text = json.dumps(result, indent=2)
    (args.out / "result.json").write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
