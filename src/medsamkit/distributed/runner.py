"""The driver side of a distributed run: submit one task per case, take results as they finish.

Results come back to the driver, which alone writes the run's results store, so progress, resume after a
crash of the driver or a worker, Ctrl-C and the refusal of a folder holding another configuration behave as
in a local run. A worker that dies mid-task loses only that task: Dask reschedules it (and ``retries``
re-runs it), and no row reaches the store twice because a case is added once, when its task returns. A
task that meets bad input returns its one-line error instead of raising; the run goes on without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from medsamkit.core.errors import InputError

TaskFn = Callable[..., dict]


def guarded(fn: TaskFn, *args: Any) -> dict:
    """Run a task; bad input becomes ``{"error": line}`` so one bad case does not stop the run."""
    try:
        return fn(*args)
    except InputError as exc:
        return {"error": str(exc)}


@dataclass
class RunReport:
    """What a distributed run did: tasks finished, the one-line errors of cases that failed, interruption."""

    finished: int = 0
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False


def run_tasks(client, fn: TaskFn, task_args: Sequence[tuple], on_result: Callable[[dict], None],
              retries: int = 2, desc: str = "tasks", show_progress: bool = True) -> RunReport:
    """Submit ``fn(*args)`` for every args tuple; call ``on_result`` on the driver as each one finishes."""
    from distributed import as_completed

    report = RunReport()
    futures = [client.submit(guarded, fn, *args, pure=False, retries=retries) for args in task_args]
    bar = tqdm(total=len(futures), desc=desc, unit="case", disable=not show_progress)
    try:
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as exc:  # the task's workers kept dying (Dask's allowed failures are used up)
                result = {"error": f"{desc}: a task failed on the cluster ({type(exc).__name__}: {exc})"}
            if "error" in result:
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
