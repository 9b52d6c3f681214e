"""How good are the SAMAug priors on their own? Per MoNuSeg test image: pixel precision / recall / Dice of the
segmentation prior's support (seg prior > 0) against the nuclei, and the AJI of the everything-mode masks used
directly as instances (painted in order of stability score, the most stable on top).

Usage: python benchmarks/priors_quality.py --priors PRIORS/test [--data shared/data/monuseg/test]
Prints JSON (medians and means over the images, and every image's row).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from _shared import monuseg_dir
from medsamkit.io.datasets import open_dataset
from medsamkit.metrics.instance import aji
from medsamkit.samaug.priors import load_masks, load_priors


def masks_as_instances(records: list, shape: tuple[int, int]) -> np.ndarray:
    """int32 instance map of everything-mode masks; where masks overlap the more stable one wins."""
    out = np.zeros(shape, dtype=np.int32)
    for i, r in enumerate(sorted(records, key=lambda r: r.stability_score), start=1):
        x0, y0, x1, y1 = r.box
        out[y0 : y1 + 1, x0 : x1 + 1][r.crop] = i
    return out


def main() -> dict:
    """Score every image that has priors and print the summary JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--priors", required=True, help="folder written by `medsamkit samaug priors`")
    ap.add_argument("--data", default=None, help="the images' data SPEC (default: MoNuSeg test in shared/)")
    args = ap.parse_args()
    data = args.data or str(monuseg_dir("test"))
    rows = []
    for case in open_dataset(data).cases():
        seg, _ = load_priors(args.priors, case.name)
        records, shape = load_masks(Path(args.priors) / "masks" / f"{case.name}.npz")
        truth = np.asarray(case.label)
        fg, sup = truth > 0, seg > 0
        tp = float((fg & sup).sum())
        rows.append({"image": case.name, "masks": len(records), "nuclei": int(len(np.unique(truth)) - 1),
                     "pixel_precision": tp / max(float(sup.sum()), 1.0),
                     "pixel_recall": tp / max(float(fg.sum()), 1.0),
                     "pixel_dice": 2 * tp / max(float(sup.sum() + fg.sum()), 1.0),
                     "sam_masks_aji": aji(masks_as_instances(records, shape), truth)})
    keys = ["pixel_precision", "pixel_recall", "pixel_dice", "sam_masks_aji"]
    result = {"images": len(rows),
              "mean": {k: round(statistics.fmean(r[k] for r in rows), 4) for k in keys},
              "median": {k: round(statistics.median(r[k] for r in rows), 4) for k in keys},
              "per_image": rows}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
