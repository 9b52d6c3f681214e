"""What every benchmark script shares: where the project's shared/ data is ($MEDSAMKIT_SHARED, else shared/ beside
(or inside) the checkout; the test suite applies the same search order in tests/shared_data.py, and tests never
import from benchmarks/), the --smoke size that `make bench-smoke` runs, and the run logs' readers."""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The first of $MEDSAMKIT_SHARED, ../shared, ./shared that holds a data/ folder, else None."""
    env = os.environ.get("MEDSAMKIT_SHARED")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (cand / "data").is_dir():
            return cand
    return None


def require_shared(found: Path | None, what: str) -> Path:
    """``found`` (a shared/ data folder), or stop: under CI=true (CI always has ../shared) with an error, else
    with one JSON line saying what was skipped and exit code 0."""
    if found is not None:
        return found
    if os.environ.get("CI") == "true":
        raise SystemExit(f"{what}: not found under shared/ (CI=true: ../shared must hold it)")
    print(json.dumps({"skipped": f"{what} not found (shared/ data absent; set MEDSAMKIT_SHARED)"}))
    raise SystemExit(0)


def add_smoke(ap: argparse.ArgumentParser) -> None:
    """The --smoke flag every script takes (tools/bench_smoke.py runs each script with it)."""
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, outputs in a temporary folder (benchmarks/results/ untouched): checks the "
                         "script still runs")


def apply_smoke(args: argparse.Namespace, outputs: tuple[str, ...] = (), **sizes) -> Path | None:
    """With --smoke: set each of ``sizes`` on ``args`` and point each output argument in ``outputs`` into a fresh
    temporary folder (removed at exit), keeping its file name; returns that folder (None without --smoke)."""
    if not args.smoke:
        return None
    tmp = Path(tempfile.mkdtemp(prefix="bench-smoke-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    for name, value in sizes.items():
        setattr(args, name, value)
    for name in outputs:
        current = getattr(args, name)
        target = tmp / (Path(current).name if current else name)
        setattr(args, name, str(target) if isinstance(current, str) else target)
    return tmp


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
