"""Wall-clock time of label-map work on one real MoNuSeg label: object extraction and the instance metrics.

Usage: ``python benchmarks/metrics_speed.py [--label PNG] [--repeats 5] [--shift 3] [--out metrics_speed.json]``
(``--smoke``: one repeat, the JSON in a temporary folder).
The label defaults to the first test label of shared/data/monuseg (beside the checkout or under
$MEDSAMKIT_SHARED). Measures, after one warm-up call each, the median of ``--repeats`` calls of
``extract_objects(label)`` and of every instance metric on (label shifted by ``--shift`` px, label).
Prints one JSON document (also written to --out). It asserts nothing: the unit tests used to hold
limits of 0.3 s (extract_objects) and 2.0 s (aji) on the 2-core development machine; they are
reported here as ``former_test_limit_s`` for comparison.
The process is left as Python starts it (no runtime.setup): the tests measured it that way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from _shared import add_smoke, apply_smoke, monuseg_dir, require_shared
from medsamkit.core.objects import extract_objects
from medsamkit.metrics import aji, object_dice, object_f1, object_f1_counts, object_hausdorff

FORMER_LIMITS_S = {"extract_objects": 0.3, "aji": 2.0}


def default_label() -> Path:
    """The first (sorted) label PNG of shared/data/monuseg/test."""
    root = require_shared(monuseg_dir("test"), "MoNuSeg test (shared/data/monuseg; or pass --label)")
    return sorted((root / "labels").glob("*.png"))[0]


def median_seconds(call: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall-clock seconds of ``repeats`` calls after one warm-up call, and the last result."""
    result = call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure(label: np.ndarray, repeats: int, shift: int) -> dict:
    """Timings (s) and results of extract_objects and each instance metric on one label."""
    shifted = np.roll(label, shift, axis=1)
    calls: dict[str, Callable[[], object]] = {
        "extract_objects": lambda: len(extract_objects(label)),
        "aji": lambda: aji(shifted, label),
        "object_f1_counts": lambda: object_f1_counts(shifted, label),
        "object_f1": lambda: object_f1(shifted, label),
        "object_dice": lambda: object_dice(shifted, label),
        "object_hausdorff": lambda: object_hausdorff(shifted, label),
    }
    out = {}
    for name, call in calls.items():
        seconds, value = median_seconds(call, repeats)
        entry = {"median_s": round(seconds, 4), "value": value if isinstance(value, int | tuple) else round(value, 6)}
        if name in FORMER_LIMITS_S:
            entry["former_test_limit_s"] = FORMER_LIMITS_S[name]
        out[name] = entry
    return out


def main() -> None:
    """Parse arguments, measure, print (and optionally write) the JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", type=Path, default=None, help="instance label PNG (default: MoNuSeg test)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shift", type=int, default=3, help="columns the prediction is shifted by")
    parser.add_argument("--out", type=Path, default=None)
    add_smoke(parser)
    args = parser.parse_args()
    apply_smoke(args, ("out",), repeats=1)
    path = args.label or default_label()
    label = np.asarray(Image.open(path))
    result = {
        "label": path.name,
        "shape": list(label.shape),
        "objects": int(len(np.unique(label[label > 0]))),
        "shift_px": args.shift,
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
        "timings": measure(label, args.repeats, args.shift),
    }
    text = json.dumps(result, indent=2, default=list)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
