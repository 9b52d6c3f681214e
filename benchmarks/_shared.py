"""Where the benchmark scripts find the project's shared/ data: $MEDSAMKIT_SHARED, else shared/ beside (or
inside) the checkout. One rule for every script; the test suite applies the same search order in
tests/shared_data.py (tests never import from benchmarks/)."""

from __future__ import annotations

import csv
import os
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The first of $MEDSAMKIT_SHARED, ../shared, ./shared that holds a data/ folder, else None."""
    env = os.environ.get("MEDSAMKIT_SHARED")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (cand / "data").is_dir():
            return cand
    return None


def monuseg_dir(split: str | None = None) -> Path | None:
    """shared/data/monuseg (or its train/test split) when it holds images, else None."""
    base = shared_dir()
    if base is None:
        return None
    root = base / "data" / "monuseg"
    folder = root / split if split else root
    probe = folder / "images" if split else root / "test" / "images"
    return folder if probe.is_dir() else None


def logged_speed(metrics_csv: Path) -> float | None:
    """Iterations per second over a U-Net run, from the per-iteration wall-clock in its metrics.csv."""
    with metrics_csv.open(newline="") as fh:
        seconds = [float(r["seconds"]) for r in csv.DictReader(fh) if r.get("seconds")]
    return round(len(seconds) / sum(seconds), 4) if seconds and sum(seconds) > 0 else None


def last_losses(run_root: Path, seeds: list[str], arms: list[str], n: int = 50) -> dict:
    """Mean training loss over the last n logged iterations of every RUN_ROOT/seedS/ARM folder (the loss
    curves' ends), as {arm: {seed: loss}}."""
    out: dict = {}
    for seed in seeds:
        for arm in arms:
            csv_path = run_root / f"seed{seed}" / arm / "metrics.csv"
            if csv_path.is_file():
                with csv_path.open(newline="") as fh:
                    losses = [float(r["loss"]) for r in csv.DictReader(fh)][-n:]
                out.setdefault(arm, {})[seed] = round(statistics.fmean(losses), 4) if losses else None
    return out
