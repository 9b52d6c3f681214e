"""Does fusing the elementwise tails into the oneDNN kernels pay on this CPU? One op at a time, at the
shapes of LiteMedSAM's TinyViT on a 256x256 image, each variant timed in alternation in one process.

Variants: depthwise 3x3 conv with GELU fused vs the conv then GELU; MLP fc1 with GELU fused vs fc1 then
GELU; fc2 with the residual add fused (binary post-op) vs fc2 then add; MBConv's conv3 + residual (+ GELU)
as one binary kernel vs separate ops; 1x1 convolutions as oneDNN conv vs oneDNN linear on the
channels-last view; attention qkv as MKL addmm vs oneDNN linear. Prints JSON: median ms per call and the
max abs difference of each variant's output to the first variant's.

Usage: python benchmarks/onednn_epilogues.py [--threads 2] [--reps 9]   (--smoke: 3 reps)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from _shared import add_smoke, apply_smoke
from medsamkit.core import runtime


def bench(variants: dict[str, Callable[[], torch.Tensor]], reps: int) -> dict:
    """Median ms per call of each variant (first two calls dropped) and its max abs diff to the first."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for _ in range(reps):
            for name, fn in variants.items():
                t = time.perf_counter()
                outputs[name] = fn()
                times[name].append(time.perf_counter() - t)
    ref = next(iter(outputs.values()))
    return {name: {"ms": round(1000 * statistics.median(v[2:]), 2),
                   "max_abs_diff": float((outputs[name].reshape(ref.shape) - ref).abs().max())}
            for name, v in times.items()}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=9)
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, reps=3)  # the first two are warm-up
    runtime.setup(threads=args.threads)
    if not torch.backends.mkldnn.is_available():
        print(json.dumps({"skipped": "this torch build has no oneDNN"}))
        return {}
    conv, lin = torch.ops.mkldnn._convolution_pointwise, torch.ops.mkldnn._linear_pointwise
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int, channels_last: bool = False) -> torch.Tensor:
        t = torch.randn(*shape, generator=gen)
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t

    res: dict[str, dict] = {}
    for c, h, s in ((256, 256, 1), (128, 256, 2), (160, 64, 1), (320, 64, 1)):
        x, w, b = rand(1, c, h, h, channels_last=True), rand(c, 1, 3, 3), rand(c)
        geo = ([1, 1], [s, s], [1, 1], c)
        res[f"depthwise3x3_c{c}_{h}px_stride{s}"] = bench({
            "gelu_fused": lambda x=x, w=w, b=b, geo=geo: conv(x, w, b, *geo, "gelu", [None], "none"),
            "conv_then_gelu": lambda x=x, w=w, b=b, geo=geo: F.gelu(conv(x, w, b, *geo, "none", [], "")),
        }, args.reps)
    for ci, co, gelu in ((64, 256, True), (256, 64, False), (64, 128, True)):
        x, w, b = rand(1, ci, 256, 256, channels_last=True), rand(co, ci, 1, 1), rand(co)
        attr = ("gelu", [None], "none") if gelu else ("none", [], "")
        res[f"conv1x1_{ci}to{co}_256px"] = bench({
            "conv": lambda x=x, w=w, b=b, attr=attr: conv(x, w, b, [0, 0], [1, 1], [1, 1], 1, *attr),
            "linear": lambda x=x, w=w, b=b, attr=attr, co=co, ci=ci:
                lin(x.permute(0, 2, 3, 1), w.view(co, ci), b, *attr).permute(0, 3, 1, 2),
        }, args.reps)
    x, r = rand(1, 256, 256, 256, channels_last=True), rand(1, 64, 256, 256, channels_last=True)
    w, b = rand(64, 256, 1, 1), rand(64)
    geo = ([0, 0], [1, 1], [1, 1], 1)
    res["mbconv_conv3_residual_gelu"] = bench({
        "separate": lambda: F.gelu(conv(x, w, b, *geo, "none", [], "") + r),
        "binary_add_then_gelu_inplace": lambda: torch.ops.aten.gelu_(
            conv.binary(x, r, w, b, *geo, "add", None, None, [], None)),
    }, args.reps)
    for side, dim in ((128, 128), (64, 160), (64, 320)):
        x, hid = rand(1, side, side, dim), rand(1, side, side, 4 * dim)
        w1, b1, w2, b2 = rand(4 * dim, dim), rand(4 * dim), rand(dim, 4 * dim), rand(dim)
        wq, bq = rand(3 * dim, dim), rand(3 * dim)
        res[f"mlp_fc1_gelu_dim{dim}"] = bench({
            "linear_then_gelu": lambda x=x, w1=w1, b1=b1: F.gelu(lin(x, w1, b1, "none", [], "")),
            "gelu_fused": lambda x=x, w1=w1, b1=b1: lin(x, w1, b1, "gelu", [None], "none"),
        }, args.reps)
        res[f"mlp_fc2_residual_dim{dim}"] = bench({
            "linear_then_add": lambda x=x, hid=hid, w2=w2, b2=b2: x + lin(hid, w2, b2, "none", [], ""),
            "add_fused": lambda x=x, hid=hid, w2=w2, b2=b2: lin.binary(hid, x, w2, b2, "add"),
        }, args.reps)
        res[f"attention_qkv_dim{dim}"] = bench({
            "mkl_addmm": lambda x=x, wq=wq, bq=bq: F.linear(x, wq, bq),
            "onednn_linear": lambda x=x, wq=wq, bq=bq: lin(x, wq, bq, "none", [], ""),
        }, args.reps)
    result = {"threads": torch.get_num_threads(), "reps": args.reps, "load_avg_1min": os.getloadavg()[0],
              "ops": res}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
