"""Parameter-efficient fine-tuning side by side (SAM-Med2D's table): LiteMedSAM zero-shot, decoder only, encoder
adapters + decoder, LoRA on the encoder's attention + decoder, each trained at the same CPU-time budget.

Usage: ``python benchmarks/peft_table.py [--datasets monuseg,glas] [--budget-cpu SECONDS] [--out FOLDER]``.
MoNuSeg: train -> test; GlaS: train -> test A (shared/data, found as every benchmark finds it; when absent the
script prints a JSON line saying so and exits 0).

Each training run gets the same budget in CPU seconds of its own process (time.process_time: other jobs on a
shared machine slow the wall clock, not this count); wall seconds and steps are reported beside it. Every run
is a fresh process (its peak RSS, ru_maxrss, is its own). Each run is validated on a validation split of the
training images every --validate-every epochs and when its budget ends (validation CPU time is not counted in the
budget); its best.pt is its best validated epoch (mean validation Dice over the prompt modes), and the validation
curve is kept in the results. Settings (the learning rate, one per mode, from --lrs) are chosen on the same
validation score; only the chosen run of each mode is evaluated on the test images, once.
Resumable: each finished run, evaluation and timing is written to OUT/results.json as it completes and skipped
on a rerun (a run interrupted mid-budget is started again from scratch, so its budget stays whole).
``--smoke``: tiny budget and sizes, one learning rate, a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _shared import add_smoke, apply_smoke, require_shared, shared_dir
from medsamkit.core.atomic import write_json_atomic
from medsamkit.core.results import read_rows
from medsamkit.core.runtime import setup
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate
from medsamkit.models import load_model
from medsamkit.models.finetuned import apply_recipe, read_run_checkpoint
from medsamkit.predictor import as_rgb_float, preprocess
from medsamkit.training import FinetuneConfig, finetune

REPO = Path(__file__).resolve().parents[1]
EVAL_MODES = "box,center,random3,iter5"  # SAM-Med2D's Bbox / 1 pt / 3 pts / 5 pts (see the README section)
MODES = ("decoder", "adapter", "lora")
SPLITS = {"monuseg": ("monuseg/train", "monuseg/test"), "glas": ("glas/train", "glas/testA")}


def train_one(cfg: FinetuneConfig, threads: int | None, queue) -> None:
    """Child process: one fine-tuning run; puts its summary and its own peak RSS (ru_maxrss, MB) on ``queue``."""
    setup(threads=threads)
    summary = finetune(cfg)
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    queue.put(summary)


def run_training(cfg: FinetuneConfig, threads: int | None) -> dict:
    """A fine-tuning run in a fresh process (spawned: no memory shared with this one)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=train_one, args=(cfg, threads, queue))
    proc.start()
    summary = queue.get()
    proc.join()
    return summary


def mean_dice(summary: dict) -> dict[str, float | None]:
    """Mean final-step Dice per prompt mode of the model rows of an evaluate summary."""
    return {row["mode"]: row["dice"]["mean"] for row in summary["table"] if row["method"] == "model"}


def encoder_speed(models: dict[str, torch.nn.Module], image: np.ndarray, rounds: int) -> dict:
    """Encoder images/s of each model, timed in interleaved rounds (median), and each one's ratio to 'base'."""
    x, _ = preprocess(models["base"].preprocessing, as_rgb_float(image))
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m.encode(x)  # warm-up
        for _ in range(rounds):
            for name, m in models.items():
                t = time.perf_counter()
                m.encode(x)
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"images_per_s": {k: round(1 / v, 3) for k, v in med.items()},
            "ratio_to_base": {k: round(med["base"] / v, 3) for k, v in med.items()}, "rounds": rounds}


class Table:
    """OUT/results.json: everything finished so far. Several processes (``--modes``) may share it: each piece
    is merged into the file on disk under a lock and written atomically."""

    def __init__(self, path: Path, settings: dict) -> None:
        self.path = path
        self.doc: dict = {}
        self.put("settings", None, settings)

    @contextlib.contextmanager  # the file read under an exclusive lock (released on leaving)
    def locked(self):
        with open(self.path.with_suffix(".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self.doc = json.loads(self.path.read_text()) if self.path.exists() else {}
                for section in ("runs", "test", "speed"):
                    self.doc.setdefault(section, {})
                yield self.doc
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def has(self, section: str, key: str) -> bool:
        """Whether ``section`` of the file on disk holds ``key`` (finished by this or another process)."""
        with self.locked() as doc:
            return key in doc[section]

    def put(self, section: str, key: str | None, value) -> None:
        """Merge one finished piece into the file (``key`` None: the whole section)."""
        with self.locked() as doc:
            if key is None:
                doc[section] = value
            else:
                doc[section][key] = value
            write_json_atomic(self.path, doc)


def train_candidates(args, table: Table, ds: str, mode: str, train_dir: Path) -> None:
    """Every learning rate of ``mode`` on ``ds`` at the budget (each run validated once, at its end)."""
    for lr in args.lrs:
        key = f"{ds}/{mode}/lr{lr:g}"
        if table.has("runs", key):
            continue
        out = args.out / key
        shutil.rmtree(out, ignore_errors=True)  # an interrupted run starts again with its whole budget
        cfg = FinetuneConfig(
            data=[str(train_dir)], out=str(out), mode=mode, train_decoder=mode != "decoder", use_cache=False,
            prompts=EVAL_MODES, lr=lr, epochs=10_000, validate_every=args.validate_every, max_cpu_seconds=args.budget_cpu,
            batch_size=args.batch_size, max_objects=args.max_objects, val_objects=args.val_objects,
            max_images=args.max_images, seed=args.seed, save_every=0, show_progress=args.progress,
            box_anchor=args.box_anchor, box_floor=args.box_floor)
        s = run_training(cfg, args.threads)
        curve = validation_curve(out / "metrics.csv")
        best = next((row for row in curve if row["epoch"] == s["best_epoch"]), curve[-1] if curve else {})
        table.put("runs", key, {
            "mode": mode, "lr": lr, "best": str(out / "best.pt"), "steps": s["steps"], "epochs": s["epochs_done"],
            "best_epoch": s["best_epoch"], "train_cpu_seconds": s.get("train_cpu_seconds"),
            "train_seconds": s.get("train_seconds"), "validate_cpu_seconds": s.get("validate_cpu_seconds"),
            "trainable": s["parameters"]["trainable"], "added": s["parameters"]["added"],
            "val_score": s["best_score"], "val": {k: v for k, v in best.items() if k.startswith("val_")},
            "curve": curve, "train_images": s["train_images"], "val_images": s["val_images"],
            "peak_rss_mb": s["peak_rss_mb"]})


def validation_curve(metrics_csv: Path) -> list[dict]:
    """The run's validated epochs: epoch, step and validation Dice per prompt mode (RUN/metrics.csv)."""
    rows = []
    for row in read_rows(metrics_csv):
        dice = {k: float(v) for k, v in row.items() if k.startswith("val_dice_") and v not in ("", None)}
        if dice:
            rows.append({"epoch": int(row["epoch"]), "step": int(row["step"]), **dice})
    return rows


def chosen(table: Table, ds: str, mode: str) -> dict:
    """The run of ``mode`` on ``ds`` with the best validation score."""
    runs = [r for k, r in table.doc["runs"].items() if k.startswith(f"{ds}/{mode}/")]
    return max(runs, key=lambda r: r["val_score"])


def evaluate_one(args, table: Table, ds: str, name: str, test_dir: Path) -> None:
    """Zero-shot or a mode's chosen run on the test images (a seeded subset of images and objects)."""
    key = f"{ds}/{name}"
    if table.has("test", key):
        return
    model = "litemedsam" if name == "zero_shot" else chosen(table, ds, name)["best"]
    t = time.perf_counter()
    summary = evaluate(EvaluateConfig(
        data=str(test_dir), out=str(args.out / ds / f"eval_{name}"), prompts=EVAL_MODES, model=model,
        max_images=args.test_images, max_objects=args.eval_objects, seed=args.seed, baseline=False,
        figures=False, show_progress=args.progress))
    table.put("test", key, {"model": model, "dice": mean_dice(summary), "images": summary["images"],
                            "objects": summary["objects"], "clicks": summary["clicks"]["used"],
                            "seconds": round(time.perf_counter() - t, 1)})


def record_clicks(args, table: Table, ds: str) -> None:
    """The click strategy each test evaluation used (its summary.json), for entries written before it was recorded."""
    with table.locked() as doc:
        missing = [k for k, v in doc["test"].items() if k.startswith(f"{ds}/") and "clicks" not in v]
    for key in missing:
        path = args.out / ds / f"eval_{key.split('/', 1)[1]}" / "summary.json"
        if path.exists():
            with table.locked() as doc:
                entry = {**doc["test"][key], "clicks": json.loads(path.read_text())["clicks"]["used"]}
            table.put("test", key, entry)


def speed(args, table: Table, ds: str, test_dir: Path) -> None:
    """Encoder images/s: base, adapters (as loaded), LoRA unmerged (as trained) and merged (as loaded)."""
    if table.has("speed", ds) or any(not table.has("test", f"{ds}/{m}") for m in ("adapter", "lora")):
        return  # done, or the runs it times are not chosen yet (another --modes process)
    from medsamkit.io.datasets import open_dataset

    image = next(open_dataset(str(test_dir)).cases(1)).image
    lora = read_run_checkpoint(chosen(table, ds, "lora")["best"])
    unmerged = load_model("litemedsam")
    apply_recipe(unmerged, lora["recipe"])
    unmerged.load_state_dict(lora["model"], strict=False)
    models = {"base": load_model("litemedsam"), "adapter": load_model(chosen(table, ds, "adapter")["best"]),
              "lora_unmerged": unmerged.eval(), "lora_merged": load_model(chosen(table, ds, "lora")["best"])}
    table.put("speed", ds, encoder_speed(models, image, args.speed_rounds))


def portable(doc, out: Path):
    """``doc`` with every path inside ``out`` written relative to it (the copy kept in benchmarks/results names no
    folder of the machine that ran it)."""
    if isinstance(doc, dict):
        return {k: portable(v, out) for k, v in doc.items()}
    if isinstance(doc, list):
        return [portable(v, out) for v in doc]
    if isinstance(doc, str) and Path(doc).is_absolute() and Path(doc).is_relative_to(out.resolve()):
        return str(Path(doc).relative_to(out.resolve()))
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="monuseg,glas")
    ap.add_argument("--modes", default="zero_shot,decoder,adapter,lora",
                    help="columns this process computes (processes with other --modes may share --out)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/peft_table"))
    ap.add_argument("--results", type=Path, default=None, help="copy of the final JSON (e.g. benchmarks/results/)")
    ap.add_argument("--budget-cpu", type=float, default=90.0, help="CPU seconds of training steps per run")
    ap.add_argument("--lrs", default="1e-4,1e-3", help="learning rates tried per mode (chosen on validation)")
    ap.add_argument("--validate-every", type=int, default=1, help="epochs between validations of a run")
    ap.add_argument("--box-anchor", type=float, default=0.0,
                    help="weight of the extra tight-box loss on every object (FinetuneConfig.box_anchor)")
    ap.add_argument("--box-floor", action="store_true",
                    help="validate the base weights as epoch 0 and keep no epoch with a lower validation box Dice "
                         "as the run's best (FinetuneConfig.box_floor)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-objects", type=int, default=32, help="objects per training image and epoch")
    ap.add_argument("--max-images", type=int, default=None, help="training images (default: all)")
    ap.add_argument("--val-objects", type=int, default=4, help="objects per validation image")
    ap.add_argument("--test-images", type=int, default=None, help="test images (seeded subset; default: all)")
    ap.add_argument("--eval-objects", type=int, default=None, help="objects per test image (seeded choice)")
    ap.add_argument("--speed-rounds", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--progress", action="store_true")
    add_smoke(ap)
    args = ap.parse_args(argv)
    apply_smoke(args, ("out", "results"), datasets="glas", budget_cpu=4.0, lrs="1e-4", max_images=3,
                max_objects=2, batch_size=2, val_objects=2, test_images=1, eval_objects=2, speed_rounds=1,
                box_floor=True)
    args.lrs = [float(v) for v in str(args.lrs).split(",")]
    modes = {m.strip() for m in args.modes.split(",")}
    base = shared_dir()
    wanted = [d.strip() for d in args.datasets.split(",") if d.strip()]
    found = base is not None and all((base / "data" / SPLITS[d][1] / "images").is_dir() for d in wanted)
    require_shared(base if found else None, f"{', '.join(wanted)} train and test")
    setup(threads=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "modes"}
    table = Table(args.out / "results.json", settings)
    table.put("machine", None, {"python": platform.python_version(), "torch": torch.__version__,
                                "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()})
    for ds in wanted:
        train_dir, test_dir = (base / "data" / p for p in SPLITS[ds])
        if "zero_shot" in modes:
            evaluate_one(args, table, ds, "zero_shot", test_dir)
        for mode in (m for m in MODES if m in modes):  # each column trained, chosen and tested before the next
            train_candidates(args, table, ds, mode, train_dir)
            evaluate_one(args, table, ds, mode, test_dir)
        speed(args, table, ds, test_dir)
        record_clicks(args, table, ds)
    with table.locked() as doc:
        complete = all(f"{ds}/{m}" in doc["test"] for ds in wanted for m in MODES)
    if complete:
        table.put("chosen", None, {ds: {m: chosen(table, ds, m)["lr"] for m in MODES} for ds in wanted})
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.results, portable(table.doc, args.out))
    print(json.dumps(table.doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
