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


def loss_series(run_root: Path, seeds: list[str], arms: list[str]) -> dict[str, dict[str, list[float]]]:
    """The logged training loss of every RUN_ROOT/seedS/ARM folder that has a metrics.csv, as {arm: {seed: losses}}."""
    out: dict = {}
    for seed in seeds:
        for arm in arms:
            csv_path = run_root / f"seed{seed}" / arm / "metrics.csv"
            if csv_path.is_file():
                with csv_path.open(newline="") as fh:
                    out.setdefault(arm, {})[seed] = [float(r["loss"]) for r in csv.DictReader(fh)]
    return out


def last_losses(series: dict[str, dict[str, list[float]]], n: int = 50) -> dict:
    """Mean of the last n losses of every run of a `loss_series` (the loss curves' ends), as {arm: {seed: loss}}."""
    return {arm: {seed: round(statistics.fmean(losses[-n:]), 4) if losses else None for seed, losses in per.items()}
            for arm, per in series.items()}


def wins_losses(base: dict[str, float], got: dict[str, float]) -> dict[str, int]:
    """Per-image comparison of an arm's scores against the baseline's on the images both have."""
    diffs = [got[name] - base[name] for name in got if name in base]
    return {"wins": sum(d > 1e-9 for d in diffs), "losses": sum(d < -1e-9 for d in diffs),
            "ties": sum(abs(d) <= 1e-9 for d in diffs)}
