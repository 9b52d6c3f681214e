"""Per-volume Dice / NSD of LiteMedSAM on builtin:lung-gtv: slice-wise box, box+5, propagation, 1 vs 3 slices.

Usage: python benchmarks/volume_lung.py [--out DIR] [--patients pat_2,pat_3] [--threads 2] [--cache DIR]
(--smoke: pat_2, one-slice input, no extra stop variants, propagation stops below 100 px, in a temporary folder)
Writes DIR/per_volume.jsonl (one line per volume and variant, resumable) and prints the summary JSON.
Embeddings are shared between the variants of a volume, so each slice is encoded once per input kind.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from _shared import add_smoke, apply_smoke
from medsamkit.core.runtime import setup
from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.io.builtin import load_lung_volume, lung_patients
from medsamkit.models import load_model
from medsamkit.predictor import Predictor
from medsamkit.prompts import parse_mode
from medsamkit.volumes import evaluate_case
from medsamkit.volumes.variants import Variant

METRICS = ("dice", "nsd_1mm", "nsd_2mm", "hd95_mm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/volume_lung")
    parser.add_argument("--patients", default=None, help="comma list of patient folders (default: all 4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-area", type=int, default=20)
    parser.add_argument("--min-iou", type=float, nargs="*", default=[0.6, 0.8],
                        help="extra propagation variants stopping below these predicted IoUs")
    parser.add_argument("--cache", "--embed-store", dest="cache", default=None,
                        help="embedding cache folder: slice embeddings saved, checked and reused")
    parser.add_argument("--inputs", default="1,3", help="slice inputs: 1 (the slice) and/or 3 (k-1, k, k+1)")
    add_smoke(parser)
    args = parser.parse_args()
    apply_smoke(args, ("out",), patients="pat_2", min_iou=[], inputs="1", min_area=100)

    device = setup("cpu", threads=args.threads)
    torch.set_num_threads(args.threads)
    predictor = Predictor(load_model("litemedsam", device=device))
    box, box5 = parse_mode("box"), parse_mode("box+5")
    three = [k == "3" for k in args.inputs.split(",")]
    runs = [v for t in three for v in (
        Variant(box, False, t), Variant(box5, False, t), Variant(box, True, t), Variant(box5, True, t),
        *(Variant(box, True, t, q) for q in args.min_iou))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = out / "per_volume.jsonl"
    rows = [json.loads(t) for t in lines.read_text().splitlines()] if lines.exists() else []
    done = {r["volume"] for r in rows}
    cache = EmbeddingCache(args.cache, predictor.model) if args.cache else None
    patients = lung_patients()
    if args.patients:
        by_name = {p.name: p for p in patients}
        patients = [by_name[n] for n in args.patients.split(",")]  # given order: small volumes first
    for folder in patients:
        if f"lung-gtv/{folder.name}" in done:
            continue
        case = load_lung_volume(folder)
        start = time.perf_counter()
        volume_rows, _, _ = evaluate_case(predictor, case, runs, min_area=args.min_area, cache=cache)
        print(f"{case.name}: {time.perf_counter() - start:.0f} s", flush=True)
        with lines.open("a") as f:
            for row in volume_rows:
                f.write(json.dumps(row) + "\n")
        rows.extend(volume_rows)
    summary: dict = {"dataset": "builtin:lung-gtv", "model": "litemedsam", "threads": args.threads,
                     "cpu": platform.processor() or platform.machine(), "volumes": sorted({r["volume"] for r in rows}),
                     "propagation": "start: the GTV's largest slice (box or box+5); propagated boxes: tight box "
                                    "of the previous prediction (margin 0); stop below 20 px or below min IoU",
                     "variants": {}}
    for run in runs:
        sel = [r for r in rows if r["variant"] == run.name]
        if not sel:
            continue
        entry = {"n": len(sel), "per_volume": {r["volume"]: round(float(r["dice"]), 4) for r in sel},
                 "embedded_slices": int(sum(int(r["embedded_slices"]) for r in sel)),
                 "seconds": round(sum(float(r["seconds"]) for r in sel), 1)}
        for m in METRICS:
            vals = np.array([float(r[m]) for r in sel])
            entry[f"{m}_mean"] = round(float(vals.mean()), 4)
        summary["variants"][run.name] = entry
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
