"""Connecting to Dask: a local cluster of worker processes (``--workers N``) or an existing scheduler
(``--scheduler ADDRESS``, e.g. started by `dask scheduler` + `dask worker` or by dask-jobqueue on SLURM).

Each worker sets its own threads and allocator once (``runtime.setup``, an entry point's job) through a
worker plugin. Dask runs a task in a thread of the worker's executor, not in the main thread, and glibc gives
such a thread its own malloc arena, which the allocator setting of ``runtime.setup`` does not cover the same
way: the encoder then spent ~25% more CPU per call than in a main thread (benchmarks/dask_scaling.py). So a
local cluster starts its workers with ``MALLOC_ARENA_MAX=1`` (one arena: a worker has one task thread), and
the plugin sets the same limit on workers started elsewhere (effective for threads that have not allocated
yet; start such workers with ``MALLOC_ARENA_MAX=1`` to be sure). Dask is imported only here and only when a
run asks for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from medsamkit.core.errors import InputError

PROFILE = False  # Dask's worker profiler on the local cluster (True: as Dask's default, for its dashboard)
_M_ARENA_MAX = -8


def one_arena() -> bool:
    """Limit glibc to one malloc arena in this process (unless MEDSAMKIT_NO_MALLOPT=1); True when applied."""
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("MEDSAMKIT_NO_MALLOPT") == "1":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 1))
    except OSError:  # not glibc
        return False


def worker_environ() -> dict[str, str]:
    """Environment a local cluster's worker processes start with (on top of Dask's own)."""
    import os

    return {} if os.environ.get("MEDSAMKIT_NO_MALLOPT") == "1" else {"MALLOC_ARENA_MAX": "1"}


@dataclass
class DaskConfig:
    """Where the tasks run: ``workers`` local processes, or the cluster at ``scheduler``."""

    workers: int | None = None
    threads_per_worker: int = 1
    scheduler: str | None = None
    retries: int = 2  # a task whose worker dies is re-run (Dask's own rescheduling comes on top)

    @property
    def enabled(self) -> bool:
        """True when the run should go to Dask at all."""
        return bool(self.workers) or bool(self.scheduler)

    def check(self) -> None:
        """One-line errors for settings that cannot work."""
        if self.workers is not None and self.scheduler:
            raise InputError("--workers starts a local cluster and --scheduler joins an existing one: give one")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers {self.workers}: need at least 1")
        if self.threads_per_worker < 1:
            raise InputError(f"--threads-per-worker {self.threads_per_worker}: need at least 1")


def _runtime_plugin(threads: int):
    from distributed.diagnostics.plugin import WorkerPlugin

    class RuntimeSetup(WorkerPlugin):
        """Threads and allocator of a worker process, set once when the worker starts."""

        name = "medsamkit-runtime"

        def __init__(self, n: int) -> None:
            self.threads = n

        def setup(self, worker) -> None:  # noqa: D102
            from medsamkit.core.runtime import setup

            one_arena()
            setup(threads=self.threads)

    return RuntimeSetup(threads)


def open_client(cfg: DaskConfig):
    """A Dask client for ``cfg`` (the caller closes it; a local cluster closes with it)."""
    cfg.check()
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("--workers/--scheduler need Dask: pip install 'dask[distributed]' (make install does)") from None
    if cfg.scheduler:
        try:
            client = Client(cfg.scheduler, timeout="30s")
        except OSError as exc:
            raise InputError(f"--scheduler {cfg.scheduler}: cannot connect ({exc})") from None
    else:
        import dask

        # Dask's statistical profiler samples each worker's stack every 10 ms for the dashboard, which a
        # local run does not show; it costs the one-thread workers CPU (benchmarks/dask_scaling.py).
        environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **worker_environ()}
        with dask.config.set({"distributed.worker.profile.enabled": PROFILE,
                              "distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=cfg.threads_per_worker,
                                   processes=True, host="127.0.0.1", dashboard_address=None,
                                   silence_logs=logging.ERROR)
        client = Client(cluster)
    client.register_plugin(_runtime_plugin(cfg.threads_per_worker))
    return client


def close_client(client) -> None:
    """Close a client and the local cluster it started, if any."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()
