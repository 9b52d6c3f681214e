"""SAMAug on GlaS (paper 000, Table 2): the same U-Net, schedule and seeds with and without SAM priors; object
F1, object Dice and object Hausdorff (official GlaS definitions, medsamkit.metrics) on test A.

Scale: images and labels are resized by --scale (default 0.5: 775x522 -> 388x261) and the U-Net trains on
--crop (default 128) crops, so a crop covers the same 256x256 native field the paper's 256 crops cover (glands
are 100-500 px natively), at a quarter of the pixels: the only way a CPU schedule of thousands of iterations
fits. Priors are computed on the same scaled images (whole image as one tile, resized by the model). Test
predictions are resized back to the native size (nearest) and scored against the native labels.

Arms (--arms): baseline (image alone), box-clip / box-paper (priors of the bundled box-only LiteMedSAM from a
box grid: sides 96 and 192 px every 64 px; fusion "clip" or the paper's listing, medsamkit.samaug.fusion),
points-clip / points-paper (priors from --points-model, or from a LiteMedSAM decoder fine-tuned here for
points on GlaS TRAIN only with --finetune-points EPOCHS, driven by a --points-per-side grid, default 16). Every run folder resumes (a longer --iterations continues it), priors
folders are reused, finished evaluations are reused; results are rewritten after every arm.

Example (the paper's GPU schedule): python benchmarks/samaug_glas.py --iterations 50000 --lr-switch 30000 \\
    --seeds 0,1,2 --device cuda --out runs/samaug_glas_50k --results benchmarks/results/samaug_glas_50k.json
--smoke: baseline and box-clip, one seed, 4 iterations, 2 train and 1 test images, in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import _samaug as samaug
from _shared import (
    REPO,
    add_smoke,
    apply_smoke,
    last_losses,
    logged_speed,
    loss_series,
    require_shared,
    shared_dir,
)
from medsamkit.core.atomic import write_json_atomic
from medsamkit.core.runtime import select_device, setup
from medsamkit.samaug.everything import EverythingConfig
from priors_quality import score_priors

PAPER = {"baseline": {"object_f1": 79.33, "object_dice": 86.35},
         "samaug": {"object_f1": 82.50, "object_dice": 87.44},
         "note": "U-Net, SAM ViT-H priors, 50k iterations on a GPU; x 100; Hausdorff not given in the table"}
ARMS = ("baseline", "box-clip", "box-paper", "points-clip", "points-paper")
SPLITS = ("train", "testA")


def scaled_split(glas: Path, split: str, out: Path, scale: float, limit: int | None = None) -> Path:
    """OUT/data/SPLIT with the first `limit` (default all) images (bilinear) and instance labels (nearest) resized
    by `scale`; files already there are reused."""
    from PIL import Image

    folder = out / "data" / split
    names = sorted(p.name for p in (glas / split / "images").glob("*.png"))[:limit]
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        if (folder / "labels" / name).is_file():
            continue
        img = Image.open(glas / split / "images" / name).convert("RGB")
        lab = np.asarray(Image.open(glas / split / "labels" / name))
        size = (round(img.width * scale), round(img.height * scale))
        img.resize(size, Image.BILINEAR).save(folder / "images" / name)
        Image.fromarray(resize_labels(lab, (size[1], size[0]))).save(folder / "labels" / name)
    return folder


def resize_labels(lab: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to (H, W), sampling each output pixel's centre."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * lab.shape[0] / shape[0]).astype(int), lab.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * lab.shape[1] / shape[1]).astype(int), lab.shape[1] - 1)
    return np.ascontiguousarray(lab[np.ix_(rows, cols)])


def everything_config(kind: str, args: argparse.Namespace) -> EverythingConfig:
    """Everything mode for glands on the scaled images: one tile; box grid (box model) or point grid."""
    common = {"tile_size": 0, "min_area": args.min_area, "max_area": None, "pred_iou_thresh": 0.5,
              "stability_thresh": 0.6, "box_nms_thresh": 0.5}
    return samaug.everything_config(kind, {"proposal": "grid", "grid_box_sizes": (96, 192), "grid_stride": 64,
                                           **common},
                                    {"points_per_side": args.points_per_side, "point_window_tokens": args.point_window,
                                     **common})


def points_model(data: dict[str, Path], args: argparse.Namespace) -> str:
    """The point model, fine-tuned on the scaled GlaS TRAIN split only (``_samaug.points_model``)."""
    return samaug.points_model(data["train"], args.out, args.finetune_points, args.device, args.quiet,
                               max_objects=32, min_area=args.min_area)


def priors_folders(kind: str, data: dict[str, Path], args: argparse.Namespace) -> dict[str, str]:
    """Priors of both splits from the box-only model or the point model (computed once, then reused)."""
    model = "litemedsam" if kind == "box" else args.points_model
    splits = {"train": (data["train"], args.train_images), "testA": (data["testA"], args.test_images)}
    return samaug.priors_folders(kind, model, splits, args.out, everything_config(kind, args), args.device, args.quiet)


def prior_quality(folder: str, data: Path, limit: int | None) -> dict:
    """`score_priors` means and medians of a priors folder ({"incomplete": ...} while it is being computed)."""
    from medsamkit.core.errors import InputError

    try:
        return {k: v for k, v in score_priors(folder, str(data), limit).items() if k != "per_image"}
    except InputError as exc:
        return {"incomplete": str(exc)}


def _native_labels(glas: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {p.stem: np.asarray(Image.open(p)) for p in sorted((glas / "testA" / "labels").glob("*.png"))}


def evaluate_arm(run: Path, test: Path, priors: str | None, truth: dict[str, np.ndarray],
                 args: argparse.Namespace) -> dict:
    """Test A rows (object F1 counts, object Dice, object Hausdorff at native size) and their summary."""
    from medsamkit.metrics.instance import object_dice, object_f1_counts, object_hausdorff
    from medsamkit.samaug.unet import load_cases, load_run
    from medsamkit.samaug.unet_eval import predict_probs
    from medsamkit.samaug.unet_targets import instances_from_probs

    device = select_device(args.device)
    model, cfg = load_run(run, device)
    rows = []
    for name, x, _ in load_cases(str(test), priors, args.test_images, cfg.get("prior_normalisation", "clip")):
        t0 = time.perf_counter()
        pred = instances_from_probs(predict_probs(model, x, device, roi=int(cfg["crop"])), args.min_size)
        native = truth[name]
        pred = resize_labels(pred, native.shape[:2])
        tp, fp, fn = object_f1_counts(pred=pred, truth=native)
        rows.append({"image": name, "tp": tp, "fp": fp, "fn": fn,
                     "object_f1": 2 * tp / max(2 * tp + fp + fn, 1),
                     "object_dice": object_dice(pred=pred, truth=native),
                     "object_hausdorff": object_hausdorff(pred=pred, truth=native),
                     "n_pred": int(len(np.unique(pred)) - 1), "seconds": round(time.perf_counter() - t0, 2)})
    return {"checkpoint_iteration": cfg["iteration"], "summary": summarise(rows), "per_image": rows}


def summarise(rows: list[dict]) -> dict:
    """x 100 means over images (F1 also pooled over all objects of test A, as the challenge counts it)."""
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    return {"images": len(rows), "object_f1_pooled": 100 * 2 * tp / max(2 * tp + fp + fn, 1),
            "object_f1_mean": 100 * statistics.fmean(r["object_f1"] for r in rows),
            "object_dice_mean": 100 * statistics.fmean(r["object_dice"] for r in rows),
            "object_hausdorff_mean": statistics.fmean(r["object_hausdorff"] for r in rows)}


def run_arm(arm: str, seed: int, data: dict[str, Path], priors: dict[str, dict[str, str]],
            truth: dict[str, np.ndarray], args: argparse.Namespace) -> dict:
    """Train (or resume) one arm for one seed, evaluate it on test A (a finished evaluation is reused)."""
    from medsamkit.samaug.unet_train import UNetConfig, train

    kind, _, fusion = arm.partition("-")
    folders = priors.get(kind, {})
    run = Path(args.out) / args.runs / f"seed{seed}" / arm
    cfg = UNetConfig(data=str(data["train"]), out=str(run), priors=folders.get("train"),
                     prior_normalisation=fusion or "clip", iterations=args.iterations, lr_switch=args.lr_switch,
                     batch_size=args.batch_size, crop=args.crop, seed=seed, device=args.device,
                     max_images=args.train_images,
                     checkpoint_every=args.checkpoint_every, progress=not args.quiet)
    done = run / "eval-testA.json"
    if args.collect:  # only evaluations of this schedule's checkpoint count
        saved = json.loads(done.read_text()) if done.is_file() else {}
        return saved if saved.get("checkpoint_iteration") == args.iterations else {}
    train(cfg)
    if done.is_file():
        saved = json.loads(done.read_text())
        if saved.get("checkpoint_iteration") == args.iterations and saved.get("min_size") == args.min_size \
                and saved["summary"]["images"] == (args.test_images or 60):
            return saved
    result = {**evaluate_arm(run, data["testA"], folders.get("testA"), truth, args), "min_size": args.min_size,
              "train_iterations_per_second": logged_speed(run / "metrics.csv")}
    write_json_atomic(done, result)
    return result


def table(results: dict) -> dict:
    """Mean over seeds per arm, and each SAMAug arm minus the baseline of the same seeds."""
    out: dict = {}
    for arm in results["arms"]:
        per_seed = [s[arm]["summary"] for s in results["seeds"].values() if arm in s]
        if per_seed:
            out[arm] = {k: round(statistics.fmean(p[k] for p in per_seed), 2) for k in per_seed[0]}
            out[arm]["seeds"] = len(per_seed)
    return out


def paired(results: dict) -> dict:
    """Per seed, each SAMAug arm against the same seed's baseline: per-image object F1 wins / losses / ties."""
    return samaug.paired({seed: {arm: {r["image"]: r["object_f1"] for r in got.get("per_image", [])}
                                 for arm, got in arms.items()} for seed, arms in results["seeds"].items()})


def merge_earlier(results: dict, path: str) -> dict:
    """Add the arms of an earlier results file (same schedule) that this run does not train, seed by seed, in
    front of results["arms"]; returns their end-of-run losses."""
    earlier = json.loads(Path(path).read_text())
    if earlier.get("schedule") != results["schedule"]:
        raise SystemExit(f"{path}: a different schedule ({earlier.get('schedule')}); merge only the same one")
    added = [a for a in earlier["arms"] if a not in results["arms"]]
    for seed, arms in earlier["seeds"].items():
        for arm in added:
            if arm in arms:
                results["seeds"].setdefault(seed, {})[arm] = arms[arm]
    results["merged"] = {"from": Path(path).name, "arms": added, "runs": earlier.get("runs")}
    results["priors_quality_testA"] = {**earlier.get("priors_quality_testA", {}), **results["priors_quality_testA"]}
    results["arms"] = added + results["arms"]
    return {a: earlier.get("train_loss_last_50", {}).get(a, {}) for a in added}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "bench-out" / "samaug_glas"), help="data, priors and runs")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "samaug_glas.json"))
    p.add_argument("--runs", default="runs", help="U-Net run folders go to OUT/RUNS (a new name: a fresh "
                   "schedule that reuses OUT's scaled data, priors and point model)")
    p.add_argument("--arms", default="baseline,box-clip,box-paper", help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--lr-switch", type=int, default=None, help="lr 5e-4 -> 5e-5 here (default 60%%)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--min-area", type=int, default=100, help="smallest SAM mask kept (scaled pixels)")
    p.add_argument("--min-size", type=int, default=50, help="smallest gland seed of the U-Net (scaled pixels)")
    p.add_argument("--points-model", default=None, help="RUN/best.pt of a point fine-tune on GlaS train")
    p.add_argument("--finetune-points", type=int, default=None, metavar="EPOCHS",
                   help="make the point model here first: decoder fine-tune on GlaS train, center/random1 points")
    p.add_argument("--point-window", type=int, default=32, help="points mode decoding window (tokens)")
    p.add_argument("--points-per-side", type=int, default=16, help="points mode grid per image (SAM/paper: 32; "
                   "16 on the half-scale image = half the paper's density per axis, for CPU time)")
    p.add_argument("--train-images", type=int, default=None, help="first N train images (a quick check)")
    p.add_argument("--test-images", type=int, default=None, help="first N test A images (a quick check)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--merge", default=None, metavar="RESULTS_JSON",
                   help="add the arms of an earlier results file of the same schedule (e.g. its baseline) to "
                   "the table and the per-image comparison, without rerunning them")
    p.add_argument("--collect", action="store_true",
                   help="train nothing: gather the finished evaluations of OUT (runs still going elsewhere)")
    add_smoke(p)
    args = p.parse_args(argv)
    apply_smoke(args, ("out", "results"), arms="baseline,box-clip", seeds="0", iterations=4, checkpoint_every=2,
                train_images=2, test_images=1, quiet=True)
    args.arms = [a for a in args.arms.split(",") if a]
    if set(args.arms) - set(ARMS):
        p.error(f"unknown arms {sorted(set(args.arms) - set(ARMS))}")
    if any(a.startswith("points") for a in args.arms) and not (args.points_model or args.finetune_points):
        p.error("points-* arms need --points-model RUN/best.pt or --finetune-points EPOCHS (GlaS train only)")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Every seed x arm; returns (and writes, after each arm) the results dict."""
    args = parse_args(argv)
    base = shared_dir()
    require_shared(base if base and (base / "data/glas/testA/images").is_dir() else None,
                   "GlaS (shared/data/glas/{train,testA})")
    setup(threads=args.threads)
    glas = base / "data" / "glas"
    limits = {"train": args.train_images, "testA": args.test_images}
    data = {s: scaled_split(glas, s, Path(args.out), args.scale, limits[s]) for s in SPLITS}
    kinds = sorted({a.partition("-")[0] for a in args.arms} - {"baseline"})
    if "points" in kinds and not args.points_model and not args.collect:
        args.points_model = points_model(data, args)
    if args.collect:
        priors = {k: {s: str(Path(args.out) / "priors" / k / s) for s in SPLITS} for k in kinds}
    else:
        priors = {k: priors_folders(k, data, args) for k in kinds}
    run_root = Path(args.out) / args.runs
    shown = run_root.resolve().relative_to(REPO) if run_root.resolve().is_relative_to(REPO) else run_root.name
    results: dict = {"runs": str(shown),  # no machine paths in results files
                     "schedule": {k: getattr(args, k) for k in ("iterations", "lr_switch", "batch_size", "crop",
                                                                 "scale", "min_size", "min_area")},
                     "arms": args.arms, "paper": PAPER, "unit": "x 100 (Hausdorff: native pixels)", "seeds": {},
                     "priors_quality_testA": {k: prior_quality(f["testA"], data["testA"], args.test_images)
                                              for k, f in priors.items()}}
    truth = _native_labels(glas)
    merged_losses = merge_earlier(results, args.merge) if args.merge else {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in args.arms:
            got = run_arm(arm, seed, data, priors, truth, args)
            if got:
                results["seeds"].setdefault(str(seed), {})[arm] = got
            results["mean"] = table(results)
            results["per_image_f1_vs_baseline"] = paired(results)
            results["train_loss_last_50"] = {**merged_losses,
                                             **last_losses(loss_series(run_root, list(results["seeds"]), args.arms))}
            write_json_atomic(Path(args.results), results)
    print(json.dumps({k: v for k, v in results.items() if k != "seeds"}, indent=2))
    return results


if __name__ == "__main__":
    main()
