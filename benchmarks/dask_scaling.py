"""Dask against one process on the same `evaluate` workload (issue: scale-out must not cost what it brings).

Each round runs, in fresh processes and in rotating order (so machine load hits all of them alike):
- local:  one process with THREADS torch threads (default 2): `evaluation.run.evaluate`, what `medsamkit
          evaluate` runs;
- dask:   the same with the Dask executor (`distributed.runner.DaskExecutor`), `--workers W --threads-per-worker
          T` (default 2 x 1), what `medsamkit evaluate --workers W` runs;
- plain:  no Dask: W plain processes of T threads, each evaluating its share of the images/volumes (split by
          the local run's per-item times, largest first), started together. It measures what W one-thread
          processes give against one W-thread process without any engine.
Walls are taken outside the child (interpreter start, imports, model load included). Breakdown per round:
the local run's per-item seconds, the Dask run's cluster start-up, per-worker busy / model-load / idle seconds
and per-task seconds, the driver's own CPU seconds (driver + scheduler), result bytes. Prints JSON, writes
benchmarks/results/NAME.json incrementally (after each round), and prints how long the benchmark took.
Also (unless --no-kernel): the encoder alone, 20 calls on one CT slice, in one 2-thread process, one 1-thread
process, two 1-thread plain processes side by side and two 1-thread Dask workers (profiler on / off):
throughput against the 2-thread process, wall and CPU seconds per call.
Usage: python benchmarks/dask_scaling.py [--data builtin:lung-gtv] [--prompts box,box+5] [--rounds 3]
       [--modes local,dask,plain] [--name dask_scaling_lung] [--no-kernel | --kernel-only]
Quiet machine: lung ~4 min per round, MoNuSeg (--data ../shared/data/monuseg/test --max-images 4) ~10 min.
--smoke: builtin:dsb-nuclei, box prompts, one round of each mode, 10 empty tasks, results in a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _shared import add_smoke, apply_smoke

TIMING = {"seconds", "embed_seconds", "decode_seconds", "baseline_seconds"}
RESULTS = Path(__file__).resolve().parent / "results"


def _rows(path: Path) -> list[tuple]:
    with path.open(newline="") as fh:
        return sorted(tuple(sorted((k, v) for k, v in r.items() if k not in TIMING)) for r in csv.DictReader(fh))


def _cfg(args, out: Path):
    from medsamkit.evaluation.config import EvaluateConfig

    return EvaluateConfig(data=args.data, out=str(out), prompts=args.prompts, max_images=args.max_images,
                          baseline=False, figures=False, show_progress=False)


def _item_of(name: str) -> str:
    head, _, tail = name.rpartition("/")
    return head if head and tail[:1] == "z" and tail[1:].isdigit() else name


def _cpu() -> dict:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self_cpu_s": round(me.ru_utime + me.ru_stime, 2), "children_cpu_s": round(kids.ru_utime + kids.ru_stime, 2)}


def child_local(args, out: Path) -> dict:
    """One process: per-item seconds (an image, or a volume with its slices) from the finish times."""
    from medsamkit.core.runtime import setup
    from medsamkit.evaluation.run import evaluate

    setup(threads=args.threads)
    marks: list[tuple[str, float]] = []
    start = time.perf_counter()
    evaluate(_cfg(args, out), on_image=lambda row: marks.append((row["image"], time.perf_counter())))
    items: dict[str, float] = {}
    last = marks[0][1] if marks else start
    first_case = marks[0][1] - start if marks else 0.0
    for k, (name, t) in enumerate(marks):
        items[_item_of(name)] = items.get(_item_of(name), 0.0) + (t - (start if k == 0 else last))
        last = t
    return {"item_s": {k: round(v, 3) for k, v in items.items()}, "first_case_s": round(first_case, 3),
            "run_s": round(time.perf_counter() - start, 3), **_cpu()}


def child_dask(args, out: Path) -> dict:
    """The Dask driver: the run's cluster timeline, the driver's CPU and the bytes of the rows sent back."""
    from medsamkit.core.runtime import setup
    from medsamkit.distributed.cluster import DaskConfig
    from medsamkit.distributed.runner import DaskExecutor
    from medsamkit.evaluation.run import evaluate

    setup(threads=args.threads)
    start = time.perf_counter()
    dask = DaskConfig(workers=args.workers, threads_per_worker=args.threads_per_worker)
    summary = evaluate(_cfg(args, out), executor=DaskExecutor(dask))
    with (out / "per_object.csv").open(newline="") as fh:
        result_bytes = len(pickle.dumps(list(csv.DictReader(fh))))
    return {"cluster": summary["cluster"], "run_s": round(time.perf_counter() - start, 3),
            "result_bytes": result_bytes, **_cpu()}


def child_plain(args, out: Path) -> dict:
    """A plain process (no Dask): evaluate the items ``--items`` with ``--threads`` threads, no store."""
    from medsamkit.core.runtime import select_device, setup
    from medsamkit.evaluation.engine import evaluate_case, iter_dataset
    from medsamkit.io.datasets import VolumeCase
    from medsamkit.models import load_model
    from medsamkit.predictor import Predictor
    from medsamkit.prompts import parse_modes

    setup(threads=args.threads)
    cfg = _cfg(args, out)
    predictor = Predictor(load_model(cfg.model, cfg.checkpoint, select_device(cfg.device)), cfg.batch_size)
    modes = parse_modes(cfg.prompts)
    loaders = iter_dataset(cfg).loaders
    items = {}
    for i in (int(v) for v in args.items.split(",") if v):
        t0 = time.perf_counter()
        item = loaders[i]()
        for case in item.slices() if isinstance(item, VolumeCase) else [item]:
            evaluate_case(case, predictor, modes, cfg)
        items[item.name] = round(time.perf_counter() - t0, 3)
    return {"item_s": items, **_cpu()}


def encoder_loop(calls: int, threads: int) -> dict:
    """The model's encoder on one real CT slice, ``calls`` times after 2 warm-up calls: per-call wall and CPU
    seconds (medians). Runs in a plain process or as a Dask task."""
    from medsamkit.core.runtime import setup
    from medsamkit.io.datasets import open_dataset
    from medsamkit.models import load_model
    from medsamkit.predictor import Predictor

    setup(threads=threads)
    case = open_dataset("builtin:lung-gtv").loaders[0]()
    image = case.image[30]
    predictor = Predictor(load_model("litemedsam", None, "cpu"))
    walls, cpus = [], []
    for k in range(calls + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        predictor.set_image(image, f"z30-{k}")  # a new source each time: no reuse of the embedding
        if k >= 2:
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    return {"wall_s": round(statistics.median(walls), 4), "cpu_s": round(statistics.median(cpus), 4)}


def child_encoder(args, out: Path) -> dict:
    return encoder_loop(args.calls, args.threads)


def kernel_efficiency(args, out: Path) -> dict:
    """Encoder throughput (calls/s) of one 2-thread process, one 1-thread process alone, two 1-thread plain
    processes side by side, and two 1-thread Dask workers (Dask's profiler on, as by default, and off)."""
    def plain(n: int, threads: int) -> list[dict]:
        procs = [_child(args, "encoder", out / f"enc{k}", ["--threads", str(threads), "--calls", str(args.calls)])
                 for k in range(n)]
        _timed(procs)
        return [json.loads((out / f"enc{k}" / "child.json").read_text()) for k in range(n)]

    res = {"one_process_2_threads": plain(1, args.workers * args.threads_per_worker),
           "one_process_1_thread_alone": plain(1, args.threads_per_worker),
           "two_plain_processes_1_thread": plain(args.workers, args.threads_per_worker)}
    from medsamkit.distributed import cluster
    from medsamkit.distributed.cluster import DaskConfig, close_client, open_client

    for profile in (True, False):
        cluster.PROFILE = profile
        client = open_client(DaskConfig(workers=args.workers, threads_per_worker=args.threads_per_worker))
        try:
            addrs = list(client.scheduler_info()["workers"])
            futs = [client.submit(encoder_loop, args.calls, args.threads_per_worker, workers=[a], pure=False)
                    for a in addrs]
            res[f"two_dask_workers_profile_{'on' if profile else 'off'}"] = client.gather(futs)
        finally:
            close_client(client)
    cluster.PROFILE = False
    for key, runs in res.items():
        res[key] = {"runs": runs, "calls_per_s": round(sum(1 / r["wall_s"] for r in runs), 3)}
    base = res["one_process_2_threads"]["calls_per_s"]
    res["throughput_vs_one_process"] = {k: round(v["calls_per_s"] / base, 3) for k, v in res.items()
                                        if isinstance(v, dict) and "calls_per_s" in v}
    return res


def _child(args, mode: str, out: Path, extra: list[str] = ()) -> subprocess.Popen:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", mode, "--data", args.data, "--prompts", args.prompts,
           "--workers", str(args.workers), "--threads-per-worker", str(args.threads_per_worker),
           "--threads", str(args.threads), "--out", str(out), *extra]
    if args.max_images:
        cmd += ["--max-images", str(args.max_images)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


def _timed(procs: list[subprocess.Popen]) -> float:
    t0 = time.perf_counter()
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"child failed: {p.args}")
    return time.perf_counter() - t0


def _split(item_s: dict[str, float], names: list[str], parts: int) -> list[list[int]]:
    """Largest-first greedy split of the items over ``parts`` processes by their measured seconds."""
    loads, shares = [0.0] * parts, [[] for _ in range(parts)]
    for i in sorted(range(len(names)), key=lambda i: -item_s.get(names[i], 0.0)):
        k = loads.index(min(loads))
        shares[k].append(i)
        loads[k] += item_s.get(names[i], 0.0)
    return shares


def _names(args) -> list[str]:
    from medsamkit.evaluation.engine import iter_dataset

    ds = iter_dataset(_cfg(args, Path("unused")))
    return [load().name for load in ds.loaders]


def run_round(args, r: int, order: list[str], out: Path, item_s: dict | None) -> dict:
    walls, detail = {}, {}
    for mode in order:
        if mode == "plain":
            if not item_s:
                continue
            shares = _split(item_s, _names(args), args.workers)
            threads = str(args.threads_per_worker)
            procs = [_child(args, "plain", out / f"plain{k}", ["--items", ",".join(map(str, s)), "--threads", threads])
                     for k, s in enumerate(shares)]
            t0 = time.perf_counter()
            walls[mode] = _timed(procs) if procs else time.perf_counter() - t0
            detail[mode] = [json.loads((out / f"plain{k}" / "child.json").read_text()) for k in range(len(shares))]
        else:
            walls[mode] = _timed([_child(args, mode, out / mode)])
            detail[mode] = json.loads((out / mode / "child.json").read_text())
    row = {"order": order, "wall_s": {k: round(v, 2) for k, v in walls.items()}}
    if "local" in walls:
        row["ratio_dask"] = round(walls["local"] / walls["dask"], 3) if "dask" in walls else None
        row["ratio_plain"] = round(walls["local"] / walls["plain"], 3) if "plain" in walls else None
    if "dask" in walls and "plain" in walls:
        row["dask_vs_plain"] = round(walls["plain"] / walls["dask"], 3)
    if "local" in walls and "dask" in walls:
        row["rows_equal"] = _rows(out / "local" / "per_object.csv") == _rows(out / "dask" / "per_object.csv")
    row["detail"] = detail
    return row


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


def _median(rounds: list[dict], key: str, sub: str | None = None):
    vals = [r[key][sub] if sub else r[key] for r in rounds if (r.get(key) if not sub else r[key].get(sub)) is not None]
    return round(statistics.median(vals), 3) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="builtin:lung-gtv")
    ap.add_argument("--prompts", default="box,box+5")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads-per-worker", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the one-process run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="local,dask,plain")
    ap.add_argument("--tasks", type=int, default=200, help="empty tasks for the overhead measurement")
    ap.add_argument("--out", default="bench-out/dask_scaling")
    ap.add_argument("--name", default=None, help="results/NAME.json (default: dask_scaling_<data>)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--items", default="", help=argparse.SUPPRESS)
    ap.add_argument("--calls", type=int, default=20, help="encoder calls per process (kernel efficiency)")
    ap.add_argument("--kernel-only", action="store_true", help="only the encoder kernel-efficiency comparison")
    ap.add_argument("--no-kernel", action="store_true", help="skip the encoder kernel-efficiency comparison")
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help="where NAME.json goes")
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, ("out", "results_dir"), data="builtin:dsb-nuclei", prompts="box", rounds=1, tasks=10,
                no_kernel=True)
    out = Path(args.out)
    if args.child:
        res = {"local": child_local, "dask": child_dask, "plain": child_plain, "encoder": child_encoder}[args.child](args, out)
        (out / "child.json").write_text(json.dumps(res))
        return
    began = time.perf_counter()
    name = args.name or "dask_scaling_" + Path(args.data.replace("builtin:", "")).name.replace("-", "_")
    modes = args.modes.split(",")
    result = {"workload": {"data": args.data, "prompts": args.prompts, "max_images": args.max_images},
              "local": {"threads": args.threads},
              "dask": {"workers": args.workers, "threads_per_worker": args.threads_per_worker},
              "load_before": round(os.getloadavg()[0], 2), "rounds": []}
    if not args.no_kernel:
        result["kernel_efficiency"] = kernel_efficiency(args, out)
    if args.kernel_only:
        args.rounds = 0
    item_s = None
    for r in range(args.rounds):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        if "plain" in order and item_s is None and "local" in order:  # plain needs the local per-item times
            order = [m for m in order if m != "plain"] + ["plain"]
        row = run_round(args, r, order, out, item_s)
        if "local" in row["detail"]:
            item_s = row["detail"]["local"]["item_s"]
        result["rounds"].append(row)
        result["median_wall_s"] = {m: _median(result["rounds"], "wall_s", m) for m in modes}
        result["median_throughput_ratio"] = _median(result["rounds"], "ratio_dask")
        result["median_ratio_plain"] = _median(result["rounds"], "ratio_plain")
        result["median_dask_vs_plain"] = _median(result["rounds"], "dask_vs_plain")
        result["seconds"] = round(time.perf_counter() - began, 1)
        args.results_dir.mkdir(parents=True, exist_ok=True)
        (args.results_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if args.tasks:
        result["task_overhead_ms"] = round(task_overhead_ms(args.tasks, args.workers), 2)
    result["load_after"] = round(os.getloadavg()[0], 2)
    result["seconds"] = round(time.perf_counter() - began, 1)
    (args.results_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"benchmark took {result['seconds']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
