"""Dask against one process on the same `evaluate` workload (issue: scale-out must not cost what it brings).

Runs, alternating, in fresh processes each round:
- local: `medsamkit evaluate` in one process with MEDSAMKIT_THREADS=THREADS (default 2);
- dask:  the same command with `--workers W --threads-per-worker T` (default 2 x 1).
Both include start-up (imports, model load; for Dask also the cluster and each worker's model load). Also
times the scheduler's per-task overhead: N empty tasks through a local cluster, wall / N.
Prints JSON: per round the wall seconds of both, the median throughput ratio (local wall / dask wall: > 1
means Dask is faster) and the rows-equal check.
Usage: python benchmarks/dask_scaling.py [--data builtin:lung-gtv] [--prompts box,box+5] [--rounds 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TIMING = {"seconds", "embed_seconds", "decode_seconds", "baseline_seconds"}


def _rows(path: Path) -> list[tuple]:
    with path.open(newline="") as fh:
        return sorted(tuple(sorted((k, v) for k, v in r.items() if k not in TIMING)) for r in csv.DictReader(fh))


def _evaluate(args, out: Path, dask: bool) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "medsamkit", "evaluate", "--data", args.data, "--prompts", args.prompts,
           "--no-baseline", "--no-figures", "--out", str(out)]
    if args.max_images:
        cmd += ["--max-images", str(args.max_images)]
    if dask:
        cmd += ["--workers", str(args.workers), "--threads-per-worker", str(args.threads_per_worker)]
    env = {**os.environ, "MEDSAMKIT_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _noop(i: int) -> int:
    return i


def task_overhead_ms(n: int, workers: int) -> float:
    """Mean wall per empty task on a local cluster (submit -> result), tasks in flight together."""
    from distributed import Client, LocalCluster, wait

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        client.submit(_noop, -1).result()  # warm
        t0 = time.perf_counter()
        wait(client.map(_noop, range(n), pure=False))
        return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="builtin:lung-gtv")
    ap.add_argument("--prompts", default="box,box+5")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads-per-worker", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the one-process run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=200, help="empty tasks for the overhead measurement")
    ap.add_argument("--out", default="bench-out/distributed")
    args = ap.parse_args()
    out = Path(args.out)
    rounds = []
    for r in range(args.rounds):
        order = [False, True] if r % 2 == 0 else [True, False]
        walls = {("dask" if d else "local"): _evaluate(args, out / ("dask" if d else "local"), d) for d in order}
        same = _rows(out / "local" / "per_object.csv") == _rows(out / "dask" / "per_object.csv")
        rounds.append({**{k: round(v, 2) for k, v in walls.items()}, "ratio": round(walls["local"] / walls["dask"], 3),
                       "rows_equal": same})
    images = json.loads((out / "local" / "summary.json").read_text())["images"]
    result = {
        "workload": {"data": args.data, "prompts": args.prompts, "max_images": args.max_images, "images": images},
        "local": {"threads": args.threads}, "dask": {"workers": args.workers, "threads_per_worker": args.threads_per_worker},
        "rounds": rounds,
        "median_wall_s": {k: statistics.median(r[k] for r in rounds) for k in ("local", "dask")},
        "median_throughput_ratio": statistics.median(r["ratio"] for r in rounds),
        "task_overhead_ms": round(task_overhead_ms(args.tasks, args.workers), 2),
        "load_before": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
