"""The learn job's process: ``python -m medsamkit.annotate.model.learn_job JOB_DIR`` fine-tunes the decoder on an
annotation folder with the training engine, inside a time budget, with one torch thread and a lowered
priority, so the person's server keeps answering.

It reads ``JOB_DIR/job.json`` (written by ``annotate.model.learning``), validates the model being served on the
held-out images (split by image), trains from that model's weights for what is left of the budget with the
engine's ``Trainer``, validating after 2x as many steps each time (FIRST_VALIDATION, 2x, 4x, ...: a few dozen
objects are over-fitted within a few hundred steps, so the early weights must be looked at) and at the end,
and keeps the validated weights with the highest click Dice among those that pass the rule (click Dice higher,
box Dice not lower) as ``JOB_DIR/chosen.pt``. After PATIENCE validations without better acceptable weights
the round ends early: the budget is a limit, not a target.
``JOB_DIR/result.json``: before/after Dice per prompt mode, every validation, whether a new model is
accepted, and the objects it trained and validated on. ``JOB_DIR/status.json``
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
FIRST_VALIDATION = 25  # steps before the first validation; then after 2x as many steps each time
PATIENCE = 2  # validations without better acceptable weights (once some were found) before the round ends


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


def click_mean(metrics: dict, modes: list[PromptMode]) -> float:
    """Mean validation Dice of the click modes (what a round tries to raise)."""
    vals = [metrics.get(f"val_dice_{m.name}", math.nan) for m in modes if not m.uses_box]
    vals = [v for v in vals if not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else math.nan


def train_and_choose(run, modes: list[PromptMode], before: dict, seconds: float, job: dict, job_dir: Path,
                     say) -> tuple[dict, bool, str, list[dict]]:
    """Train with the engine's Trainer for at most ``seconds``, validating at steps FIRST_VALIDATION * 2^k and at
    the end; keep the validated weights with the highest click Dice among those the acceptance rule allows
    (``JOB_DIR/chosen.pt``); stop after PATIENCE validations that found nothing better.

    Returns the chosen (else the last) validation, whether one was acceptable, the reason and the history.
    """
    from medsamkit.core.atomic import save_torch_atomic
    from medsamkit.training.loop import Trainer

    tolerance = float(job.get("box_tolerance", 0.0))
    trainer = Trainer(run)
    run.cfg.max_seconds = seconds
    due_step = int(job.get("first_validation", FIRST_VALIDATION))
    history: list[dict] = []
    chosen, reason, stale = None, "no validation", 0
    while trainer.state.epoch < run.cfg.epochs:
        stopped = trainer.epoch()
        due = stopped is not None or trainer.state.step >= due_step
        trainer.end_epoch(final=due)
        say("training", before=before, train_seconds=round(seconds, 1), validations=history)
        if not due:
            continue
        due_step = 2 * max(due_step, trainer.state.step)
        metrics = {**_dice_only(trainer.last_metrics), "steps": trainer.state.step,
                   "seconds": round(time.perf_counter() - trainer.t0, 1)}
        ok, why = acceptance(before, metrics, modes, tolerance)
        history.append({**metrics, "acceptable": ok})
        if ok and (chosen is None or click_mean(metrics, modes) > click_mean(chosen, modes)):
            chosen, reason, stale = metrics, why, 0
            save_torch_atomic(trainer.checkpoints.contents(trainer.state, trainer.state.epoch, 0),
                              job_dir / "chosen.pt")
        else:
            stale += chosen is not None
            if chosen is None:
                reason = why
        if stopped is not None or stale >= PATIENCE:
            break
    return (chosen or (history[-1] if history else {})), chosen is not None, reason, history


def run_job(job_dir: Path) -> dict:
    """Prepare, validate before, train within the budget choosing the best acceptable validated weights;
    returns (and writes) the result."""
    import torch

    from medsamkit.training.config import FinetuneConfig, check_config
    from medsamkit.training.loop import fill_cache, prepare
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
    # before: the served model as it answers clicks now (the search on a box-only model), against which the
    # round's weights (served with the click strategy their validation chose) must do better
    before = _dice_only(validate(run.model, run.val_tiles, run.cases, modes, cfg.seed, run.cache, [],
                                 job.get("served_clicks", "auto")))
    val_seconds = time.perf_counter() - t_val
    # what is left of the budget, keeping room for the last validation (the others count as training time)
    seconds = max(0.0, float(job["budget"]) - (time.perf_counter() - t0) - val_seconds)
    say("training", before=before, train_seconds=round(seconds, 1))
    t_train = time.perf_counter()
    after, accepted, reason, history = train_and_choose(run, modes, before, seconds, job, job_dir, say)
    result = {"accepted": accepted, "reason": reason, "before": before,
              "after": {k: v for k, v in after.items() if k.startswith("val_dice_")},
              "checkpoint": str(job_dir / "chosen.pt"), "steps": after.get("steps"), "validations": history,
              "train_seconds": round(time.perf_counter() - t_train, 2),
              "seconds": round(time.perf_counter() - t0, 2), "trained_on": trained_on,
              "validated_on": validated_on, "train_objects": sum(len(t.objects) for t in run.train_tiles),
              "val_objects": sum(len(t.objects) for t in run.val_tiles)}
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
