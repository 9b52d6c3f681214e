"""One batch driver for the verbs that run over a dataset's items (evaluate, evaluate-volume, segment-volume over
a SPEC, embed, samaug masks/priors).

A verb describes its run as a `BatchJob`: tasks (a module-level function and its arguments; the function
yields the results of one item, or of one part of it), ``take`` (record one result on the driver, the only
writer of the run's files) and ``finish`` (the report of what the folder holds). An executor computes the
tasks: `run_here` in this process, or ``distributed.runner.DaskExecutor`` as Dask tasks. `run_batch` is the one
place that turns the outcome into the verb's answer: Ctrl-C leaves a valid partial report and re-raises
KeyboardInterrupt; bad input here stops the run after reporting what was finished; cases that failed on a
cluster are listed under ``failed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm import tqdm

from medsamkit.core.errors import InputError

#: ``fn(resources, *args)``: the results of one task, computed with the executor's resources (model, cache,
#: dataset items: ``embedding.resources`` here, ``distributed.worker_state`` on a Dask worker).
TaskFn = Callable[..., Iterator[dict]]


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(resources, *args)`` (``fn`` module-level, so a Dask worker can import it)."""

    fn: TaskFn
    args: tuple


class BatchJob(Protocol):
    """What a verb gives the driver; ``resources`` serve its tasks when they run in this process."""

    desc: str  # the progress bar's label
    unit: str  # what one task of a local run is (an image, a volume)
    show_progress: bool
    resources: Any

    def tasks(self, slots: int | None) -> list[Task]:
        """The run's tasks for an executor with ``slots`` concurrent task slots (None: one after another in
        this process); a task skips what the folder already holds."""

    def take(self, result: dict) -> None:
        """Record one result of a task (called on the driver, in the order results arrive)."""

    def finish(self, interrupted: bool) -> dict:
        """Write and return the report of everything the run's folder holds."""

    def has_results(self) -> bool:
        """Whether the folder holds any finished item (a partial report is then worth writing)."""


@dataclass
class Outcome:
    """How an executor's run ended: interrupted or not; the one-line errors of cases that failed on a cluster
    (None: bad input stops a local run instead); where the cluster's time went."""

    interrupted: bool = False
    failed: list[str] | None = None
    cluster: dict | None = None


Executor = Callable[[BatchJob], Outcome]


def run_here(job: BatchJob) -> Outcome:
    """The local executor: every task in this process, in order, its results taken as they come."""
    tasks = job.tasks(None)
    bar = tqdm(total=len(tasks), desc=job.desc, unit=job.unit, disable=not job.show_progress)
    try:
        for task in tasks:
            for result in task.fn(job.resources, *task.args):
                job.take(result)
            bar.update(1)
    except KeyboardInterrupt:
        return Outcome(interrupted=True)
    finally:
        bar.close()
    return Outcome()


def run_batch(job: BatchJob, executor: Executor | None = None) -> dict:
    """Run ``job`` with ``executor`` (default: `run_here`) and return its report; on Ctrl-C the report of what
    was finished is written and KeyboardInterrupt propagates."""
    try:
        outcome = (executor or run_here)(job)
    except InputError:
        if job.has_results():  # what was finished is reported before the error stops the run
            job.finish(False)
        raise
    summary = job.finish(outcome.interrupted)
    if outcome.failed is not None:
        summary["failed"] = outcome.failed
    if outcome.cluster is not None:
        summary["cluster"] = outcome.cluster
    if outcome.interrupted:
        raise KeyboardInterrupt
    return summary
