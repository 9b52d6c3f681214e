"""The driver side of a distributed run: submit one task per case, take results as they finish
(`DaskExecutor`: the Dask executor of ``core.batch``).

Results come back to the driver, which alone writes the run's results store, so progress, resume after a
crash of the driver or a worker, Ctrl-C and the refusal of a folder holding another configuration behave as
in a local run. A worker that dies mid-task loses only that task: Dask reschedules it (and ``retries``
re-runs it), and no row reaches the store twice because a case is added once, when its task returns. A
task that meets bad input returns its one-line error instead of raising; the run goes on without it.
Each result carries when and where its task ran, so a run can say where the cluster's time went.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from medsamkit.core.batch import BatchJob, Outcome, TaskFn
from medsamkit.core.errors import InputError
from medsamkit.distributed.cluster import DaskConfig, close_client, open_client


def guarded(fn: Callable[..., dict], *args: Any) -> dict:
    """Run a task; bad input becomes ``{"error": line}`` so one bad case does not stop the run. The result
    also carries ``task``: the worker's pid, the task's start and end (epoch seconds), the worker process's CPU
    seconds meanwhile (the task and whatever else the worker did) and its model load."""
    from medsamkit.distributed.worker_state import take_load_seconds

    start, cpu = time.time(), time.process_time()
    try:
        result = fn(*args)
    except InputError as exc:
        result = {"error": str(exc)}
    result["task"] = {"pid": os.getpid(), "start": start, "end": time.time(), "model_load_s": take_load_seconds(),
                      "cpu_s": time.process_time() - cpu}
    return result


@dataclass
class RunReport:
    """What a distributed run did: tasks finished, the one-line errors of cases that failed, interruption,
    and each task's timing (``timeline`` sums it up)."""

    finished: int = 0
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False
    submitted_at: float = 0.0
    tasks: list[dict] = field(default_factory=list)

    def timeline(self) -> dict:
        """Where the cluster's time went: per worker busy seconds, model loads, idle time before the first
        task and after its last one, against the run's wall from submission to the last result."""
        if not self.tasks:
            return {"tasks": 0}
        end = max(t["end"] for t in self.tasks)
        workers = {}
        for pid in sorted({t["pid"] for t in self.tasks}):
            mine = [t for t in self.tasks if t["pid"] == pid]
            workers[str(pid)] = {
                "tasks": len(mine), "busy_s": round(sum(t["end"] - t["start"] for t in mine), 3),
                "cpu_s": round(sum(t["cpu_s"] for t in mine), 3),
                "model_load_s": round(sum(t["model_load_s"] for t in mine), 3),
                "wait_first_s": round(min(t["start"] for t in mine) - self.submitted_at, 3),
                "idle_after_last_s": round(end - max(t["end"] for t in mine), 3)}
        return {"tasks": len(self.tasks), "wall_s": round(end - self.submitted_at, 3), "workers": workers,
                "task_s": [round(t["end"] - t["start"], 3) for t in self.tasks]}


def run_tasks(client, fn: Callable[..., dict], task_args: Sequence[tuple], on_result: Callable[[dict], None],
              retries: int = 2, desc: str = "tasks", show_progress: bool = True) -> RunReport:
    """Submit ``fn(*args)`` for every args tuple; call ``on_result`` on the driver as each one finishes."""
    from distributed import as_completed

    report = RunReport(submitted_at=time.time())
    futures = [client.submit(guarded, fn, *args, pure=False, retries=retries) for args in task_args]
    bar = tqdm(total=len(futures), desc=desc, unit="task", disable=not show_progress)
    try:
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as exc:  # the task's workers kept dying (Dask's allowed failures are used up)
                result = {"error": f"{desc}: a task failed on the cluster ({type(exc).__name__}: {exc})"}
            if "task" in result:
                report.tasks.append(result.pop("task"))
            if "error" in result:
                if result["error"] not in report.errors:  # the parts of one bad case fail alike: say it once
                    report.errors.append(result["error"])
            else:
                on_result(result)
                report.finished += 1
            bar.update(1)
    except KeyboardInterrupt:
        report.interrupted = True
        client.cancel(futures)
    finally:
        bar.close()
    return report


def batch_task(fn: TaskFn, args: tuple) -> dict:
    """Worker side of a batch task: every result of ``fn(WORKER, *args)``."""
    from medsamkit.distributed.worker_state import WORKER

    return {"results": list(fn(WORKER, *args))}


class DaskExecutor:
    """Runs a batch job's tasks on Dask (``--workers N`` or ``--scheduler ADDRESS``); the driver takes the
    results as tasks finish, so the job's files grow as in a local run."""

    def __init__(self, cfg: DaskConfig) -> None:
        self.cfg = cfg

    def __call__(self, job: BatchJob) -> Outcome:
        """Start or join the cluster, run the job's tasks, close what was started."""
        started = time.time()
        client = open_client(self.cfg)
        try:
            tasks = job.tasks(sum(client.nthreads().values()) or 1)

            def take(result: dict) -> None:
                for one in result["results"]:
                    job.take(one)

            report = run_tasks(client, batch_task, [(t.fn, t.args) for t in tasks], take, retries=self.cfg.retries,
                               desc=job.desc, show_progress=job.show_progress)
        finally:
            close_client(client)
        cluster = {"start_s": round(report.submitted_at - started, 3), **report.timeline()}
        return Outcome(report.interrupted, report.errors, cluster)
