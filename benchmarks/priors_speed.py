"""Everything-mode options on real MoNuSeg: recall of nuclei (IoU > 0.5) and time, on a tile and a full image.

Usage: ``python benchmarks/priors_speed.py [--data MONUSEG_TEST_FOLDER] [--out results.json] [--naive]``.
The data folder defaults to shared/data/monuseg/test beside the checkout (or under $MEDSAMKIT_SHARED).
Prints one JSON document (also written to --out). ``--naive`` adds the paper-style box grid with the full
decoder (768 prompts per tile: minutes on 2 cores). ``--smoke``: the tile comparison only.

``--images-only`` measures only the per-image table: priors (masks + seg + boundary maps) for one MoNuSeg
image (1000x1000, 256 tiles) and one GlaS test A image (the samaug_glas.py scale, one tile), with box and
point prompts, each the settings samaug_monuseg.py / samaug_glas.py use. Point rows take --points-model (a
LiteMedSAM fine-tuned with points); without one the bundled LiteMedSAM is marked point-capable for the
timing only (same network, same cost; its masks from points are meaningless, so recall is left out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from _shared import add_smoke, apply_smoke, monuseg_dir, require_shared
from medsamkit.core import runtime
from medsamkit.io.images import read_image, read_label
from medsamkit.models import load_model
from medsamkit.predictor import Predictor
from medsamkit.samaug.everything import EverythingConfig, generate_masks, instance_recall
from medsamkit.samaug.priors import boundary_prior, segmentation_prior

REPO = Path(__file__).resolve().parents[1]


def default_data() -> Path:
    """shared/data/monuseg/test beside the checkout, or under $MEDSAMKIT_SHARED."""
    return monuseg_dir("test") or REPO.parent / "shared" / "data" / "monuseg" / "test"


def precision(records: list, label: np.ndarray, iou_threshold: float = 0.5) -> float:
    """Fraction of masks matching some nucleus at IoU > threshold (1.0 when there are no masks)."""
    ids, sizes = np.unique(label, return_counts=True)
    area = dict(zip(ids.tolist(), sizes.tolist(), strict=True))
    hits = 0
    for r in records:
        x0, y0, x1, y1 = r.box
        under = label[y0 : y1 + 1, x0 : x1 + 1][r.crop]
        got, inter = np.unique(under[under > 0], return_counts=True)
        hits += any(n / (r.area + area[g] - n) > iou_threshold for g, n in zip(got.tolist(), inter.tolist()))
    return hits / len(records) if records else 1.0


def measure(predictor: Predictor, image: np.ndarray, label: np.ndarray, cfg: EverythingConfig) -> dict:
    """Run everything mode once; recall, mask count and seconds (priors included)."""
    start, cpu = time.perf_counter(), time.process_time()
    records = generate_masks(predictor, image, cfg)
    masks_s = time.perf_counter() - start
    segmentation_prior(records, image.shape[:2])
    boundary_prior(records, image.shape[:2])
    total_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    return {
        "recall@0.5": round(instance_recall(records, label), 3),
        "precision@0.5": round(precision(records, label), 3),
        "masks": len(records),
        "nuclei": int(len(np.unique(label)) - 1),
        "masks_s": round(masks_s, 2),
        "total_s": round(total_s, 2),
        # CPU seconds of this process / threads: the wall time on otherwise idle cores (shared machines).
        "cpu_s_per_thread": round(cpu_s / torch.get_num_threads(), 2),
    }


def image_settings() -> dict[str, tuple[str, EverythingConfig]]:
    """Per-image rows: (data set, settings) as the SAMAug benchmarks use them."""
    glas = {"tile_size": 0, "min_area": 100, "max_area": None}
    return {
        "monuseg_box_blobs": ("monuseg", EverythingConfig()),
        "monuseg_points_16_per_tile_window16": ("monuseg", EverythingConfig(proposal="points", points_per_side=16,
                                                                            point_window_tokens=16)),
        "glas_box_grid": ("glas", EverythingConfig(proposal="grid", grid_box_sizes=(96, 192), grid_stride=64,
                                                   **glas)),
        "glas_points_32x32_window32": ("glas", EverythingConfig(proposal="points", points_per_side=32,
                                                                point_window_tokens=32, **glas)),
    }


def glas_image(name: str, scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A GlaS test A image and label at the samaug_glas.py scale (bilinear / nearest)."""
    from PIL import Image

    from _shared import shared_dir

    base = shared_dir() / "data" / "glas" / "testA"
    img = Image.open(base / "images" / f"{name}.png").convert("RGB")
    size = (round(img.width * scale), round(img.height * scale))
    lab = Image.open(base / "labels" / f"{name}.png").resize(size, Image.NEAREST)
    return np.asarray(img.resize(size, Image.BILINEAR)), np.asarray(lab)


def image_rows(args: argparse.Namespace, monuseg: tuple[np.ndarray, np.ndarray]) -> dict:
    """Seconds per image (priors included) for every `image_settings` row."""
    box = Predictor(load_model("litemedsam"))
    points = Predictor(load_model(args.points_model)) if args.points_model else Predictor(load_model("litemedsam"))
    if not args.points_model:
        points.model.point_prompts = True  # timing only: the decoder's cost does not depend on its weights
    data = {"monuseg": monuseg, "glas": glas_image(args.glas_image)}
    rows = {}
    for name, (which, cfg) in image_settings().items():
        image, label = data[which]
        predictor = points if cfg.proposal == "points" else box
        predictor.set_image(image[:64, :64])  # warm-up
        row = measure(predictor, image, label, cfg)
        row["image_shape"] = list(image.shape[:2])
        row["settings"] = {k: v for k, v in asdict(cfg).items() if v != getattr(EverythingConfig(), k)}
        if cfg.proposal == "points" and not args.points_model:
            row = {k: v for k, v in row.items() if "@" not in k} | {"model": "bundled, timing only"}
        rows[name] = row
        print(name, row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--image", default="TCGA-2Z-A9J9-01A-01-TS1")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--naive", action="store_true")
    parser.add_argument("--skip-full", action="store_true", help="only the tile comparison")
    parser.add_argument("--images-only", action="store_true", help="only the per-image table (see above)")
    parser.add_argument("--points-model", default=None, help="RUN/best.pt fine-tuned with points")
    parser.add_argument("--glas-image", default="testA_1")
    add_smoke(parser)
    args = parser.parse_args()
    apply_smoke(args, ("out",), skip_full=True, naive=False, images_only=False)
    require_shared(args.data if (args.data / "images").is_dir() else None, f"MoNuSeg test ({args.data})")
    runtime.setup(threads=args.threads)
    image = read_image(args.data / "images" / f"{args.image}.png")
    label = read_label(args.data / "labels" / f"{args.image}.png")
    if args.images_only:
        result = {"machine": {"threads": torch.get_num_threads(), "load_avg_1min_at_start":
                              round(os.getloadavg()[0], 2)}, "monuseg_image": args.image,
                  "glas_image": args.glas_image, "per_image": image_rows(args, (image, label))}
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return
    predictor = Predictor(load_model("litemedsam"))
    tile, tile_label = image[:256, :256], label[:256, :256]
    base = EverythingConfig()
    options = {
        "blobs_local (default)": base,
        "blobs_full_decoder": replace(base, local_decode=False),
        "blobs_local_4pads": replace(base, blob_pads=(0, 3, 6, 10)),
        "blobs_local_stability0.8": replace(base, stability_thresh=0.8),
        "grid_local": replace(base, proposal="grid"),
    }
    if args.naive:
        options["grid_full_decoder (paper-style naive)"] = replace(base, proposal="grid", local_decode=False)
    load = os.getloadavg()[0]  # other work on the machine inflates wall times
    result: dict = {
        "machine": {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                    "load_avg_1min_at_start": round(load, 2)},
        "image": args.image,
        "tile_256": {},
    }
    predictor.set_image(tile)  # warm-up: first-call allocations are not the method's cost
    start, cpu = time.perf_counter(), time.process_time()
    predictor.set_image(tile)
    result["encoder_s_per_tile"] = round(time.perf_counter() - start, 2)
    result["encoder_cpu_s_per_thread_per_tile"] = round((time.process_time() - cpu) / torch.get_num_threads(), 2)
    for name, cfg in options.items():
        result["tile_256"][name] = measure(predictor, tile, tile_label, cfg)
        print(name, result["tile_256"][name], flush=True)
    if not args.skip_full:
        result["full_image_default"] = measure(predictor, image, label, base)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
