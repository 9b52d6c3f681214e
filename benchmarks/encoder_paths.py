"""LiteMedSAM encoder variants measured in one process, alternating order: the default path, eager
convolutions (oneDNN only where GELU is fused, the previous default) and int8 dynamic quantisation of every
Linear (torch.ao); optionally the onnxruntime encoder from `medsamkit export` (--onnx) and torch.compile with
inductor's freezing (--compile, about 75 s of compilation on 2 cores, reported). Prints JSON: median seconds
per 256x256 image, time ratios to the default (>1: slower), and the embedding's max abs / relative difference
to the default path.

Usage: python benchmarks/encoder_paths.py [--threads 2] [--rounds 6] [--onnx] [--compile]   (--smoke: one round)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from _shared import add_smoke, apply_smoke
from medsamkit.core import runtime
from medsamkit.models import load_model, onednn


def main() -> dict:
    """Time each variant `rounds` times (order rotated every round) and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--onnx", action="store_true", help="also the onnxruntime encoder (exported to a temp folder)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile (inductor, freezing)")
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, rounds=1, onnx=False, compile=False)
    runtime.setup(threads=args.threads)
    model = load_model("litemedsam")
    encoder = model.image_encoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notice
        int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder), {torch.nn.Linear}, dtype=torch.qint8)
    paths: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "default": encoder, "eager_convs": encoder, "int8_linear": int8,
    }
    extra: dict[str, float] = {}
    tmp = tempfile.TemporaryDirectory()
    if args.onnx:
        from medsamkit.models.export import export_onnx
        from medsamkit.models.onnx_backend import OnnxSamModel

        export_onnx(model, tmp.name)
        paths["onnxruntime"] = OnnxSamModel.load(tmp.name, threads=torch.get_num_threads()).encode
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        paths["torch_compile"] = torch.compile(encoder)

    def run(name: str, x: torch.Tensor) -> torch.Tensor:
        onednn.PLAIN_CONVS = name != "eager_convs"
        return paths[name](x)

    names = list(paths)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        outputs = {}
        for n in names:  # also the warm-up (and the compilation)
            t = time.perf_counter()
            outputs[n] = run(n, x)
            if n == "torch_compile":
                extra["torch_compile_first_call_s"] = round(time.perf_counter() - t, 1)
        for r in range(args.rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                t = time.perf_counter()
                run(name, x)
                times[name].append(time.perf_counter() - t)
    onednn.PLAIN_CONVS = True
    ref = outputs["default"]
    med = {n: float(np.median(v)) for n, v in times.items()}
    result = {
        "threads": torch.get_num_threads(), "rounds": args.rounds, "load_avg_1min": os.getloadavg()[0],
        "median_s": {n: round(v, 3) for n, v in med.items()},
        "time_ratio_to_default": {n: round(v / med["default"], 3) for n, v in med.items()},
        "max_abs_diff_to_default": {n: float((o - ref).abs().max()) for n, o in outputs.items()},
        "relative_l2_diff_to_default": {n: float((o - ref).norm() / ref.norm()) for n, o in outputs.items()},
        **extra,
    }
    tmp.cleanup()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
