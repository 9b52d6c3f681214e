"""Where the LiteMedSAM encoder's time goes: torch.profiler self time per op (and per input shape for the
heaviest ones) over a few 256x256 images on the default inference path. Prints JSON: ms per image per op,
its share of the total, and the top (op, shapes) rows. Run it on a quiet machine: under load, waiting
OpenMP threads inflate some kernels far more than others.

Usage: python benchmarks/encoder_profile.py [--threads 2] [--images 3] [--top 20]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from torch.profiler import profile

from medsamkit import runtime
from medsamkit.models import load_model


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    runtime.setup(threads=args.threads)
    encoder = load_model("litemedsam").image_encoder
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for _ in range(2):
            encoder(x)  # warm-up: oneDNN primitives are created on the first calls
        with profile(record_shapes=True) as prof:
            for _ in range(args.images):
                encoder(x)
    n = args.images
    by_op = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in by_op)
    by_shape = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    result = {
        "threads": torch.get_num_threads(), "images": n, "load_avg_1min": os.getloadavg()[0],
        "total_ms_per_image": round(total / 1000 / n, 1),
        "ops": [{"op": e.key, "ms_per_image": round(e.self_cpu_time_total / 1000 / n, 1),
                 "share": round(e.self_cpu_time_total / total, 3), "calls_per_image": e.count // n}
                for e in by_op[: args.top]],
        "op_shapes": [{"op": e.key, "input_shapes": [s for s in e.input_shapes if s][:3],
                       "ms_per_image": round(e.self_cpu_time_total / 1000 / n, 1), "calls_per_image": e.count // n}
                      for e in by_shape[: args.top]],
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
