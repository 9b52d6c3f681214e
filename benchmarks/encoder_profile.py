"""Where the LiteMedSAM encoder's time goes: torch.profiler self time per op (and per input shape for the
heaviest ones) over a few 256x256 images on the default inference path. Prints JSON: ms per image per op,
its share of the total, and the top (op, shapes) rows. Run it on a quiet machine: under load, waiting
OpenMP threads inflate some kernels far more than others.

It also prints the encoder's floor: its matmul/convolution FLOPs (torch's FlopCounterMode on the aten
path), this machine's fp32 GEMM rate on a large square matmul (best and median of 15), the time the
matmul / convolution / attention kernels alone take inside the encoder, and what those FLOPs would take
at the best GEMM rate.

Usage: python benchmarks/encoder_profile.py [--threads 2] [--images 3] [--top 20]   (--smoke: one image)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from _shared import add_smoke, apply_smoke
from medsamkit.core import runtime
from medsamkit.models import load_model

# The ops that do the encoder's multiply-adds (everything else is layout, normalisation, activations).
CONV_OPS = {"mkldnn::_convolution_pointwise", "aten::mkldnn_convolution", "aten::_slow_conv2d_forward"}
MATMUL_OPS = {"mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::bmm",
              "aten::_scaled_dot_product_flash_attention_for_cpu"}


def encoder_flops(encoder: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Convolution and matmul FLOPs of one forward (autograd on, so the plain aten ops FlopCounterMode counts run)."""
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:
        encoder(x)
    counts = counter.get_flop_counts()["Global"]
    conv = sum(v for k, v in counts.items() if "convolution" in str(k))
    return {"conv": conv, "matmul": counter.get_total_flops() - conv}


def gemm_rate(n: int = 2048, repeats: int = 15) -> tuple[float, float]:
    """(best, median) GFLOP/s of an n x n x n fp32 matmul on the current threads."""
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=c)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t)
    flop = 2 * n**3 / 1e9
    return flop / min(times), flop / float(np.median(times))


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, images=1, top=5)
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
    flops = encoder_flops(encoder, x)
    best, median = gemm_rate()
    by_shape = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    result = {
        "threads": torch.get_num_threads(), "images": n, "load_avg_1min": os.getloadavg()[0],
        "total_ms_per_image": round(total / 1000 / n, 1),
        "floor": floor_summary(by_op, n, flops, best, median),
        "ops": [{"op": e.key, "ms_per_image": round(e.self_cpu_time_total / 1000 / n, 1),
                 "share": round(e.self_cpu_time_total / total, 3), "calls_per_image": e.count // n}
                for e in by_op[: args.top]],
        "op_shapes": [{"op": e.key, "input_shapes": [s for s in e.input_shapes if s][:3],
                       "ms_per_image": round(e.self_cpu_time_total / 1000 / n, 1), "calls_per_image": e.count // n}
                      for e in by_shape[: args.top]],
    }
    print(json.dumps(result, indent=2))
    return result


def floor_summary(by_op: list, images: int, flops: dict[str, int], best: float, median: float) -> dict:
    """The kernels' time inside the encoder against their FLOPs and this machine's GEMM rate."""
    def seconds(ops: set[str] | None) -> float:
        us = sum(e.self_cpu_time_total for e in by_op if (e.key in ops if ops else e.key not in CONV_OPS | MATMUL_OPS))
        return us / 1e6 / images

    conv_s, matmul_s, other_s = seconds(CONV_OPS), seconds(MATMUL_OPS), seconds(None)
    total = flops["conv"] + flops["matmul"]
    return {
        "gflop": {"conv": round(flops["conv"] / 1e9, 2), "matmul": round(flops["matmul"] / 1e9, 2)},
        "gemm_gflops_2048": {"best": round(best, 1), "median": round(median, 1)},
        "all_flops_at_best_gemm_rate_s": round(total / 1e9 / best, 3),
        "kernel_s": {"conv": round(conv_s, 3), "matmul": round(matmul_s, 3), "other_ops": round(other_s, 3)},
        "kernel_gflops": {"conv": round(flops["conv"] / 1e9 / conv_s, 1),
                          "matmul": round(flops["matmul"] / 1e9 / matmul_s, 1)},
    }


if __name__ == "__main__":
    main()
