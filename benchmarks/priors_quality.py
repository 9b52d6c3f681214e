"""How good are the SAMAug priors on their own? Per image: pixel precision / recall / Dice of the segmentation
prior's support (seg prior > 0) against the labelled objects, and the everything-mode masks used directly as
instances (painted in order of stability score, the most stable on top): AJI and GlaS object F1 / Dice.

Usage: python benchmarks/priors_quality.py --priors PRIORS/test [--data shared/data/monuseg/test]
       [--results benchmarks/results/priors_quality_NAME.json]   (--smoke: priors of builtin:dsb-nuclei, one tile, made here)
Prints JSON (medians and means over the images, and every image's row). benchmarks/samaug_glas.py and
benchmarks/samaug_monuseg.py call `score_priors` for each priors variant (box- / point-model priors).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from _shared import add_smoke, apply_smoke, monuseg_dir, require_shared
from medsamkit.io.datasets import open_dataset
from medsamkit.metrics.instance import aji, object_dice, object_f1
from medsamkit.samaug.priors import load_masks, load_priors

KEYS = ["pixel_precision", "pixel_recall", "pixel_dice", "sam_masks_aji", "sam_masks_object_f1",
        "sam_masks_object_dice"]


def masks_as_instances(records: list, shape: tuple[int, int]) -> np.ndarray:
    """int32 instance map of everything-mode masks; where masks overlap the more stable one wins."""
    out = np.zeros(shape, dtype=np.int32)
    for i, r in enumerate(sorted(records, key=lambda r: r.stability_score), start=1):
        x0, y0, x1, y1 = r.box
        out[y0 : y1 + 1, x0 : x1 + 1][r.crop] = i
    return out


def image_row(priors: str | Path, name: str, truth: np.ndarray) -> dict:
    """One image's prior-quality row (support precision/recall/Dice, masks-as-instances AJI / F1 / Dice)."""
    seg, _ = load_priors(priors, name)
    records, shape = load_masks(Path(priors) / "masks" / f"{name.replace('/', '__')}.npz")
    fg, sup = truth > 0, seg > 0
    tp = float((fg & sup).sum())
    inst = masks_as_instances(records, shape)
    return {"image": name, "masks": len(records), "objects": int(len(np.unique(truth)) - 1),
            "pixel_precision": tp / max(float(sup.sum()), 1.0), "pixel_recall": tp / max(float(fg.sum()), 1.0),
            "pixel_dice": 2 * tp / max(float(sup.sum() + fg.sum()), 1.0), "sam_masks_aji": aji(inst, truth),
            "sam_masks_object_f1": object_f1(pred=inst, truth=truth),
            "sam_masks_object_dice": object_dice(pred=inst, truth=truth)}


def finished(priors: str | Path) -> set[str]:
    """Names of the images a priors folder has finished (its done.txt), e.g. while it is still running."""
    done = Path(priors) / "done.txt"
    return set(done.read_text().split()) if done.is_file() else set()


def score_priors(priors: str | Path, data: str, max_images: int | None = None,
                 names: set[str] | None = None) -> dict:
    """Means, medians and per-image rows of `image_row` over every image of `data` (a SPEC), or over `names`."""
    cases = [c for c in open_dataset(data).cases(max_images) if names is None or c.name in names]
    rows = [image_row(priors, c.name, np.asarray(c.label)) for c in cases]
    return {"images": len(rows),
            "mean": {k: round(statistics.fmean(r[k] for r in rows), 4) for k in KEYS},
            "median": {k: round(statistics.median(r[k] for r in rows), 4) for k in KEYS},
            "per_image": rows}


def main() -> dict:
    """Score every image that has priors and print the summary JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--priors", help="folder written by `medsamkit samaug priors` (required but with --smoke)")
    ap.add_argument("--data", default=None, help="the images' data SPEC (default: MoNuSeg test in shared/)")
    ap.add_argument("--results", default=None, help="also write the JSON here")
    ap.add_argument("--same-as", default=None, metavar="PRIORS2",
                    help="score only the images both folders have finished (compare a folder still running)")
    add_smoke(ap)
    args = ap.parse_args()
    smoke = apply_smoke(args, ("results",), data="builtin:dsb-nuclei")
    if smoke:  # priors of the builtin nuclei image, made here
        from medsamkit.core.runtime import setup
        from medsamkit.samaug.priors import PriorsConfig, compute_priors

        setup()  # as the CLI (the model runs here)
        args.priors = str(smoke / "priors")
        from medsamkit.samaug.everything import EverythingConfig

        compute_priors(PriorsConfig(data=args.data, out=args.priors, everything=EverythingConfig(tile_size=0),
                                    progress=False))
    elif not args.priors:
        ap.error("--priors is required")
    data = args.data or str(require_shared(monuseg_dir("test"), "MoNuSeg test (shared/data/monuseg)"))
    names = finished(args.priors) & finished(args.same_as) if args.same_as else None
    result = score_priors(args.priors, data, names=names)
    result["images_scored"] = sorted(r["image"] for r in result["per_image"])
    if args.results:
        Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
