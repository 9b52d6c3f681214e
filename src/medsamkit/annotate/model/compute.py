"""The session's one compute thread: every embedding and decoder call of the ``Segmenter`` runs on it, a person's
prompt before a requested embedding before a background one.

Why one thread: PyTorch's CPU kernels run on OpenMP, and each Python thread that calls them gets a team of
worker threads of its own. Once the teams together hold more threads than the machine has cores, OpenMP's
workers stop spinning between kernels and sleep (GNU OpenMP's "throttled" wait), and every one of the
decoder's many small kernels then pays a wake-up: a click's search on an embedded image ran 1.3x slower on 2
cores after a second thread had called torch (``benchmarks/annotate_latency.py``; docs/facts.md, "One compute
thread"). The server answers requests on many threads and embeds on another, so it gave every click that cost.
"""

from __future__ import annotations

import itertools
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

URGENT, WANTED, BACKGROUND = 0, 1, 2  # a person's prompt; an embedding asked for; prefetch and idle waits
_STOP = -1


class ComputeThread:
    """One daemon thread running submitted calls one at a time, the lowest priority number first, in submission
    order within a priority; it uses the torch thread count of the thread that created it and stops when this
    object is shut down or garbage collected."""

    def __init__(self, name: str = "compute") -> None:
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=_serve, args=(self._queue, torch.get_num_threads()), name=name,
                                        daemon=True)
        self._thread.start()
        # the thread holds the queue, not this object: once nobody holds it, the thread is told to stop
        weakref.finalize(self, self._queue.put, (_STOP, -1, None, None, ()))

    def submit(self, fn: Callable[..., Any], *args: Any, priority: int = WANTED) -> Future:
        """Queue ``fn(*args)``; its future holds the result or the exception. RuntimeError after ``shutdown``."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the compute thread was shut down")
            self._queue.put((priority, next(self._order), future, fn, args))
        return future

    def call(self, fn: Callable[..., Any], *args: Any, priority: int = URGENT) -> Any:
        """``fn(*args)`` on the compute thread, waited for (run in place when called from that thread)."""
        if self.on_thread():
            return fn(*args)
        return self.submit(fn, *args, priority=priority).result()

    def on_thread(self) -> bool:
        """Whether the caller is the compute thread."""
        return threading.current_thread() is self._thread

    def shutdown(self) -> None:
        """Cancel what is queued and stop after the running call (returns at once)."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item[2] is not None:
                    item[2].cancel()
            self._queue.put((_STOP, next(self._order), None, None, ()))


def _serve(tasks: queue.PriorityQueue, threads: int) -> None:
    """The compute thread's loop: run queued calls until the stop item."""
    torch.set_num_threads(threads)  # OpenMP's thread count is per thread: the creator's, not the default
    while True:
        _, _, future, fn, args = tasks.get()
        if future is None:
            return
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # the caller sees it on the future
                future.set_exception(exc)
        del future, fn, args  # hold nothing (a segmenter's bound method) while waiting for the next call
