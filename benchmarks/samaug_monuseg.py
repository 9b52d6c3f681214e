"""SAMAug on MoNuSeg (paper 000, Table 1): the same U-Net trained with and without SAM priors, AJI on test.

Variants (--arms): baseline; box-clip / box-paper (priors of the box-only LiteMedSAM, `samaug priors` with
blob proposals; fusion "clip" or the paper's listing, medsamkit.samaug.fusion); points-clip / points-paper
(priors from a LiteMedSAM decoder fine-tuned with points on MoNuSeg TRAIN only, benchmarks/finetune_monuseg.py,
then `samaug priors --model RUN/best.pt --proposal points`). Each arm is its own run folder, same seeds and
schedule; the prior quality of every priors folder (test split), the per-image AJI wins / losses of every arm
against the same seed's baseline and the training loss at each run's end are reported beside the AJI.
Priors folders not given are computed under OUT/priors/{box,points}/{train,test} (box: stain-blob proposals;
points: the point grid of --points-model, or of a decoder fine-tuned here on TRAIN only, --finetune-points).

Example (the paper's schedule, priors made beforehand with `medsamkit samaug priors`):
  python benchmarks/samaug_monuseg.py --train DATA/monuseg/train --test DATA/monuseg/test \\
      --priors-train PRIORS/train --priors-test PRIORS/test --points-priors-train PPRIORS/train \\
      --points-priors-test PPRIORS/test --arms baseline,box-clip,box-paper,points-clip,points-paper \\
      --iterations 50000 --lr-switch 30000 --seeds 0,1,2 --out runs/samaug_monuseg
Example (everything computed here; the point model from 4 epochs on MoNuSeg train):
  python benchmarks/samaug_monuseg.py --arms baseline,box-clip,box-paper,points-clip,points-paper \\
      --finetune-points 4 --seeds 0,1 --iterations 4000 --crop 128 --threads 1 --out runs/samaug_monuseg
Every run resumes from its last.pt; finished priors, point model and evaluations are reused. Prints and writes
OUT/results.json (and --results) and the runs' loss curves, OUT/loss_curves.png (or --curves).
--smoke: baseline and box-clip, 2 iterations of 2 crops, the 256 px corner of one train and one test image (priors on
the whole corner), in a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import _samaug as samaug
from _shared import (
    add_smoke,
    apply_smoke,
    last_losses,
    logged_speed,
    loss_series,
    monuseg_dir,
    require_shared,
)
from medsamkit.core.runtime import setup
from medsamkit.samaug.everything import EverythingConfig
from medsamkit.samaug.unet_eval import UNetEvalConfig, evaluate
from medsamkit.samaug.unet_train import UNetConfig, train
from priors_quality import score_priors

PAPER_AJI = {"baseline_aji": 58.36, "samaug_aji": 64.30}  # U-Net, 50k iterations, AJI x 100
ARMS = ("baseline", "box-clip", "box-paper", "points-clip", "points-paper")


def _arm(args: argparse.Namespace, seed: int, arm: str, priors_train: str | None,
         priors_test: str | None) -> dict:
    """Train (or resume) one arm for one seed, then evaluate it on the test split."""
    run = Path(args.out) / f"seed{seed}" / arm
    fusion = arm.partition("-")[2] or "clip"
    cfg = UNetConfig(data=args.train, out=str(run), priors=priors_train, prior_normalisation=fusion,
                     iterations=args.iterations,
                     lr_switch=args.lr_switch, batch_size=args.batch_size, crop=args.crop, seed=seed,
                     max_images=args.train_images, threads=args.threads, device=args.device,
                     checkpoint_every=args.checkpoint_every, progress=not args.quiet)
    train(cfg)
    eval_dir = run / "eval-test"
    summary_path = eval_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    reusable = (summary.get("checkpoint_iteration") == args.iterations
                and summary.get("eval", {}).get("max_images") == args.test_images
                and summary.get("data") == args.test and summary.get("priors") == priors_test)
    if not reusable:
        summary = evaluate(UNetEvalConfig(run=str(run), data=args.test, priors=priors_test, out=str(eval_dir),
                                          max_images=args.test_images, threads=args.threads, device=args.device,
                                          progress=not args.quiet))
    with (eval_dir / "per_image.csv").open(newline="") as fh:
        per_image = {r["image"]: float(r["aji"]) for r in csv.DictReader(fh)}
    return {"aji": 100 * summary["mean_aji"], "n_test": summary["n"], "per_image": per_image,
            "train_iterations_per_second": logged_speed(run / "metrics.csv")}


def points_model(args: argparse.Namespace) -> str:
    """The point model, fine-tuned on the MoNuSeg TRAIN split only on the 256 px tiles the priors use
    (``_samaug.points_model``)."""
    return samaug.points_model(args.train, args.out, args.finetune_points, args.device, args.quiet, max_objects=48,
                               tile_size=256, max_images=args.points_train_images or args.train_images)


def everything_config(kind: str, args: argparse.Namespace) -> EverythingConfig:
    """Stain-blob boxes for the box-only model; for the point model a grid of --points-per-side per 256 px tile
    (8: a point every 32 px, the density of SAM's 32x32 grid on a 1000 px image, the paper's setting)."""
    tile = {"tile_size": args.priors_tile}
    return samaug.everything_config(kind, {"proposal": "blobs", **tile}, {"points_per_side": args.points_per_side,
                                                                          **tile})


def computed_priors(kind: str, model: str, args: argparse.Namespace) -> tuple[str, str]:
    """The train and test priors folders of one kind under OUT/priors (computed once, then reused)."""
    splits = {"train": (args.train, args.train_images), "test": (args.test, args.test_images)}
    folders = samaug.priors_folders(kind, model, splits, args.out, everything_config(kind, args), args.device,
                                    args.quiet)
    return folders["train"], folders["test"]


def corner_crop(folder: Path, out: Path, size: int) -> str:
    """OUT with the top-left SIZE x SIZE corner of FOLDER's first image and label (an images/ + labels/ SPEC)."""
    from medsamkit.io.images import read_image, read_label, write_mask

    name = sorted((folder / "images").glob("*.png"))[0].name
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True)
    image = read_image(folder / "images" / name)[:size, :size]
    write_mask(out / "images" / name, image)
    write_mask(out / "labels" / name, read_label(folder / "labels" / name)[:size, :size])
    return str(out)


def binned(series: dict[str, dict[str, list[float]]], bin_size: int = 200) -> dict:
    """The loss curves of a `loss_series`, as the mean training loss per bin of `bin_size` iterations."""
    return {arm: {seed: [round(statistics.fmean(losses[i:i + bin_size]), 4) for i in range(0, len(losses), bin_size)]
                  for seed, losses in per.items()} for arm, per in series.items()}


def plot_curves(curves: dict, bin_size: int, path: Path) -> None:
    """One panel per seed: every arm's binned loss curve (the evidence beside the AJI table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({s for per_arm in curves.values() for s in per_arm})
    fig, axes = plt.subplots(1, len(seeds), figsize=(5 * len(seeds), 3.5), sharey=True, squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        for arm, per_seed in curves.items():
            values = per_seed.get(seed, [])
            ax.plot([(i + 1) * bin_size for i in range(len(values))], values, label=arm,
                    lw=2 if arm == "baseline" else 1)
        ax.set_title(f"seed {seed}")
        ax.set_xlabel("iteration")
    axes[0][0].set_ylabel(f"training loss (mean of {bin_size})")
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _priors_stats(folder: str) -> dict:
    """What `medsamkit samaug priors` recorded for a folder: images, masks, seconds per image (median, max)."""
    index = Path(folder) / "index.json"
    if not index.is_file():
        return {}
    rows = json.loads(index.read_text())["images"]  # "skipped": reused by the last call, still finished
    secs = [r["seconds"] for r in rows if r.get("seconds") is not None]
    return {"images": len(rows), "masks": sum(r["masks"] for r in rows),
            "seconds_per_image_median": round(statistics.median(secs), 1) if secs else None,
            "seconds_per_image_max": round(max(secs), 1) if secs else None}


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison for every seed; returns (and prints) the results dict."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default=None, help="MoNuSeg train SPEC (default: shared/data/monuseg/train)")
    p.add_argument("--test", default=None, help="MoNuSeg test SPEC (default: shared/data/monuseg/test)")
    p.add_argument("--priors-train", default=None, help="priors folder of the train images (omit: baseline only)")
    p.add_argument("--priors-test", default=None, help="priors folder of the test images")
    p.add_argument("--points-priors-train", default=None, help="point-model priors of the train images")
    p.add_argument("--points-priors-test", default=None, help="point-model priors of the test images")
    p.add_argument("--arms", default=None, help=f"comma list of {', '.join(ARMS)} (default: baseline and "
                   "box-clip when box priors are given)")
    p.add_argument("--points-model", default=None, help="RUN/best.pt of a point fine-tune on MoNuSeg train")
    p.add_argument("--finetune-points", type=int, default=None, metavar="EPOCHS",
                   help="fine-tune the point model here on the train split (OUT/points-model)")
    p.add_argument("--points-train-images", type=int, default=None,
                   help="fine-tune the point model on the first N train images (default: all; 20%% validate)")
    p.add_argument("--points-per-side", type=int, default=8, help="point grid per 256 px tile (8: SAM's density)")
    p.add_argument("--priors-tile", type=int, default=256, help="everything-mode tile size (0: whole image)")
    p.add_argument("--out", help="folder for all runs and results.json (required but with --smoke)")
    p.add_argument("--results", default=None, help="also write the results here")
    p.add_argument("--curves", default=None, help="loss-curve figure (default OUT/loss_curves.png)")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--lr-switch", type=int, default=None, help="lr 5e-4 -> 5e-5 here (default 60%%)")
    p.add_argument("--seeds", default="0", help="comma list, e.g. 0,1,2")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--train-images", type=int, default=None, help="use only the first N train images")
    p.add_argument("--test-images", type=int, default=None, help="evaluate only the first N test images")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_smoke(p)
    args = p.parse_args(argv)
    setup(threads=args.threads)  # as the CLI: the allocator setting; threads as asked (default all cores)
    smoke = apply_smoke(args, ("out", "results", "curves"), arms="baseline,box-clip", iterations=2,
                        checkpoint_every=1, batch_size=2, train_images=1, test_images=1, priors_tile=0, quiet=True)
    for split in ("train", "test"):
        given = getattr(args, split)
        setattr(args, split, given or str(require_shared(monuseg_dir(split), f"MoNuSeg {split} (shared/data/monuseg)")))
        if smoke:  # a 256 px corner of the first image: every step runs, on a sixteenth of the pixels
            setattr(args, split, corner_crop(Path(getattr(args, split)), smoke / "data" / split, 256))
    if not args.out:
        p.error("--out is required")
    folders = {"box": (args.priors_train, args.priors_test), "points": (args.points_priors_train,
                                                                         args.points_priors_test)}
    if any((a is None) != (b is None) for a, b in folders.values()):
        p.error("give the train and the test priors folder of a kind together")
    arms = args.arms.split(",") if args.arms else ["baseline"] + (["box-clip"] if args.priors_train else [])
    for arm in arms:
        if arm not in ARMS:
            p.error(f"arm {arm!r}: unknown (one of {', '.join(ARMS)})")
    kinds = {arm.partition("-")[0] for arm in arms} - {"baseline"}
    if "points" in kinds and folders["points"][0] is None and not (args.points_model or args.finetune_points):
        p.error("points-* arms need --points-priors-train/-test, --points-model RUN/best.pt or --finetune-points")
    for kind in sorted(kinds):
        if folders[kind][0] is None:
            model = "litemedsam" if kind == "box" else (args.points_model or points_model(args))
            folders[kind] = computed_priors(kind, model, args)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {"unit": "AJI x 100 (mean over test images)", "iterations": args.iterations,
                     "schedule": {"iterations": args.iterations, "lr_switch": args.lr_switch,
                                  "batch_size": args.batch_size, "crop": args.crop},
                     "arms": arms, "seeds": {}}
    per_image: dict = {}
    for seed in seeds:
        row = {}
        for arm in arms:
            train_dir, test_dir = folders.get(arm.partition("-")[0], (None, None))
            got = _arm(args, seed, arm, train_dir, test_dir)
            row[f"{arm}_aji"], row[f"{arm}_it_per_s"], row["n_test"] = (
                got["aji"], got["train_iterations_per_second"], got["n_test"])
            per_image.setdefault(str(seed), {})[arm] = got["per_image"]
        results["seeds"][str(seed)] = row
    for arm in arms:
        values = [r[f"{arm}_aji"] for r in results["seeds"].values()]
        results.setdefault("mean", {})[f"{arm}_aji"] = statistics.fmean(values)
    results["paper"] = PAPER_AJI
    results["per_image_aji_vs_baseline"] = samaug.paired(per_image)
    results["per_image_aji"] = per_image
    series = loss_series(Path(args.out), [str(s) for s in seeds], arms)
    results["train_loss_last_50"] = last_losses(series)
    results["train_loss_per_200"] = binned(series)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    plot_curves(results["train_loss_per_200"], 200, Path(args.curves or Path(args.out) / "loss_curves.png"))
    results["priors"] = {kind: {"train": _priors_stats(a), "test": _priors_stats(b),
                                "quality_test": {k: v for k, v in score_priors(b, args.test, args.test_images).items()
                                                 if k != "per_image"}}
                         for kind, (a, b) in folders.items() if a}
    text = json.dumps(results, indent=2) + "\n"
    (Path(args.out) / "results.json").write_text(text)
    if args.results:
        Path(args.results).write_text(text)
    json.dump(results, sys.stdout, indent=2)
    print()
    return results


if __name__ == "__main__":
    main()
