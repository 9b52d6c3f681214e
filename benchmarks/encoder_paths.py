"""LiteMedSAM encoder variants measured in one process, alternating order: the default path, eager
convolutions (oneDNN only where GELU is fused, the previous default) and int8 dynamic quantisation of every
Linear (torch.ao). Prints JSON: median seconds per 256x256 image, time ratios to the default (>1: slower), and the embedding's
max abs / relative difference to the default path.

Usage: python benchmarks/encoder_paths.py [--threads 2] [--rounds 6]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings

import numpy as np
import torch

from medsamkit import runtime
from medsamkit.models import load_model, tiny_vit


def main() -> dict:
    """Time each variant `rounds` times (order rotated every round) and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    runtime.setup(threads=args.threads)
    encoder = load_model("litemedsam").image_encoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notice
        int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder), {torch.nn.Linear}, dtype=torch.qint8)

    def run(name: str, x: torch.Tensor) -> torch.Tensor:
        tiny_vit._PLAIN_ONEDNN = name != "eager_convs"
        return (int8 if name == "int8_linear" else encoder)(x)

    names = ["default", "eager_convs", "int8_linear"]
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        outputs = {n: run(n, x) for n in names}  # also the warm-up
        for r in range(args.rounds):
            for name in names[r % 3:] + names[: r % 3]:
                t = time.perf_counter()
                run(name, x)
                times[name].append(time.perf_counter() - t)
    tiny_vit._PLAIN_ONEDNN = True
    ref = outputs["default"]
    med = {n: float(np.median(v)) for n, v in times.items()}
    result = {
        "threads": torch.get_num_threads(), "rounds": args.rounds, "load_avg_1min": os.getloadavg()[0],
        "median_s": {n: round(v, 3) for n, v in med.items()},
        "time_ratio_to_default": {n: round(v / med["default"], 3) for n, v in med.items()},
        "max_abs_diff_to_default": {n: float((o - ref).abs().max()) for n, o in outputs.items()},
        "relative_l2_diff_to_default": {n: float((o - ref).norm() / ref.norm()) for n, o in outputs.items()},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
