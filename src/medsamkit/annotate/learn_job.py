"""The learn job's process: ``python -m medsamkit.annotate.learn_job JOB_DIR`` fine-tunes the decoder on an
annotation folder with the training engine, inside a time budget, with one torch thread and a lowered
priority, so the person's server keeps answering.

It reads ``JOB_DIR/job.json`` (written by ``annotate.learning``), validates the model being served on the
held-out images (split by image), trains from that model's weights for what is left of the budget,
validates again and writes ``JOB_DIR/result.json``: before/after Dice per prompt mode, whether the new model
is accepted (click Dice higher, box Dice not lower) and the objects it trained on. ``JOB_DIR/status.json``
tells the server the phase. It never writes annotation files, so killing it loses no annotation.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

from medsamkit.core.atomic import write_json_atomic
from medsamkit.prompts import PromptMode, parse_modes

NICE = 10  # below the server: its requests win the CPU


def acceptance(before: dict, after: dict, modes: list[PromptMode], box_tolerance: float = 0.0) -> tuple[bool, str]:
    """Accept when the mean click-mode Dice rises and no box mode's Dice falls by more than
    ``box_tolerance``; the reason in words."""
    clicks = [m.name for m in modes if not m.uses_box]
    boxes = [m.name for m in modes if m.uses_box]

    def mean(d: dict, names: list[str]) -> float:
        vals = [d.get(f"val_dice_{n}", math.nan) for n in names]
        vals = [v for v in vals if isinstance(v, float) and not math.isnan(v)]
        return float(sum(vals) / len(vals)) if vals else math.nan

    c0, c1 = mean(before, clicks), mean(after, clicks)
    if clicks and not c1 > c0:
        return False, f"click Dice {c1:.4f} is not higher than {c0:.4f}"
    for name in boxes:
        b0, b1 = before.get(f"val_dice_{name}", math.nan), after.get(f"val_dice_{name}", math.nan)
        if b1 < b0 - box_tolerance:
            return False, f"{name} Dice {b1:.4f} is lower than {b0:.4f}" + (
                f" - {box_tolerance:g}" if box_tolerance else "")
    return True, f"click Dice {c0:.4f} -> {c1:.4f}, box Dice not lower" + (
        f" (within {box_tolerance:g})" if box_tolerance else "")


def _dice_only(metrics: dict) -> dict:
    return {k: round(float(v), 6) for k, v in metrics.items() if k.startswith("val_dice_")}


def run_job(job_dir: Path) -> dict:
    """Prepare, validate before, train within the budget, validate after; returns (and writes) the result."""
    import torch

    from medsamkit.training.config import FinetuneConfig, check_config
    from medsamkit.training.loop import fill_cache, prepare, train
    from medsamkit.training.validate import validate

    t0 = time.perf_counter()
    job = json.loads((job_dir / "job.json").read_text())
    status = job_dir / "status.json"

    def say(phase: str, **extra) -> None:
        write_json_atomic(status, {"phase": phase, "seconds": round(time.perf_counter() - t0, 2), **extra})

    say("preparing")
    torch.set_num_threads(int(job.get("threads", 1)))
    cfg = FinetuneConfig(**job["config"])
    check_config(cfg)
    modes = parse_modes(cfg.prompts)
    run = prepare(cfg, modes, Path(cfg.out), torch.device(cfg.device or "cpu"), 0, 1)
    fill_cache(run)
    trained_on = {run.cases[i].name: run.cases[i].meta.get("objects", []) for i in run.train_idx}
    validated_on = {run.cases[i].name: run.cases[i].meta.get("objects", []) for i in run.val_idx}
    if not run.val_tiles:
        raise RuntimeError("no validation image: annotate objects on at least 2 images")
    say("validating", step="before")
    t_val = time.perf_counter()
    before = _dice_only(validate(run.model, run.val_tiles, run.cases, modes, cfg.seed, run.cache, []))
    val_seconds = time.perf_counter() - t_val
    # what is left of the budget, keeping room for the validation after training
    cfg.max_seconds = max(0.0, float(job["budget"]) - (time.perf_counter() - t0) - val_seconds)
    say("training", before=before, train_seconds=round(cfg.max_seconds, 1))
    t_train = time.perf_counter()
    summary = train(run)
    after = _dice_only(summary.get("last", {}))
    accepted, reason = acceptance(before, after, modes, float(job.get("box_tolerance", 0.0)))
    result = {"accepted": accepted, "reason": reason, "before": before, "after": after,
              "checkpoint": str(Path(cfg.out) / "best.pt"), "steps": summary.get("steps"),
              "train_seconds": round(time.perf_counter() - t_train, 2),
              "seconds": round(time.perf_counter() - t0, 2), "trained_on": trained_on,
              "validated_on": validated_on, "train_objects": summary.get("train_objects"),
              "val_objects": summary.get("val_objects")}
    write_json_atomic(job_dir / "result.json", result)
    say("done", accepted=accepted)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of the job process; exit status 0 on a finished round (accepted or not)."""
    args = sys.argv[1:] if argv is None else argv
    job_dir = Path(args[0])
    try:
        os.nice(NICE)
    except OSError:
        pass
    from medsamkit.core import runtime

    runtime.setup("cpu", threads=1)
    try:
        run_job(job_dir)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # reported to the server through the job folder, never lost on stderr only
        write_json_atomic(job_dir / "status.json", {"phase": "failed", "error": f"{type(exc).__name__}: {exc}",
                                                    "trace": traceback.format_exc()[-2000:]})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
