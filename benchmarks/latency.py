"""Idle-machine latency of the default path: LiteMedSAM encoder median per 256x256 image and decoder ms per
prompt in a batch of 32 boxes. Prints JSON (with the 1-minute load average, so noisy runs are visible).

Usage: python benchmarks/latency.py [--rounds 8]   (--smoke: one round)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from _shared import add_smoke, apply_smoke
from medsamkit.core import runtime
from medsamkit.models import load_model
from medsamkit.predictor import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=8)
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, rounds=1)
    runtime.setup()
    model = load_model("litemedsam")
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    enc = []
    with torch.inference_mode():
        for _ in range(args.rounds + 2):
            t = time.perf_counter()
            model.encode(x)
            enc.append(time.perf_counter() - t)
    pred = Predictor(model).set_image((np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8))
    boxes = np.array([[10 + 5 * i, 10 + 3 * i, 60 + 5 * i, 70 + 3 * i] for i in range(32)], np.float32)
    pred.predict(boxes=boxes)
    dec = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        pred.predict(boxes=boxes)
        dec.append((time.perf_counter() - t) / len(boxes))
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "load_avg_1min": float(open("/proc/loadavg").read().split()[0]),
        "encoder_median_s": round(float(np.median(enc[2:])), 3),
        "decoder_ms_per_prompt_batch32": round(1000 * float(np.median(dec)), 1),
    }))


if __name__ == "__main__":
    main()
