"""The session's one compute thread: every embedding and decoder call of the ``Segmenter`` runs on it, a person's
prompt before a requested embedding before a background one.

Why one thread: PyTorch's CPU kernels run on OpenMP, and each Python thread that calls them keeps a team of
worker threads of its own for as long as it lives. Once the teams together hold more threads than the machine
has cores, OpenMP's workers stop spinning between kernels and sleep (GNU OpenMP's "throttled" wait), and every
one of the decoder's many small kernels then pays a wake-up: a click's search ran 1.4x slower on 2 cores while a
second thread that had run torch was alive (``benchmarks/compute_thread.py``; docs/facts.md, "One compute
thread"). The server answers requests on many threads and embedded on another, so it gave every click that cost.
Work that must not wait behind the queue and runs rarely (loading a learned model) goes to ``run_passing``: a
thread that ends with the call, and its team with it.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

URGENT, WANTED, BACKGROUND = 0, 1, 2  # a person's prompt; an embedding asked for; prefetch and idle waits
_STOP = None  # the wake-up that ends the thread
T = TypeVar("T")


class ComputeThread:
    """One daemon thread running submitted calls one at a time, the lowest priority number first, in submission
    order within a priority; it stops when this object is shut down or garbage collected."""

    def __init__(self, name: str = "compute") -> None:
        self._heap: list = []  # (priority, order, future, fn, args)
        self._lock = threading.Lock()  # the heap and the closed flag
        # One wake-up per queued call; a SimpleQueue's put is safe from the garbage collector's finalizer,
        # which may run on any thread (even this one, inside a get).
        self._wake: queue.SimpleQueue = queue.SimpleQueue()
        self._order = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=_serve, args=(self._heap, self._lock, self._wake), name=name,
                                        daemon=True)
        self._thread.start()
        # the thread holds the heap and the queue, not this object: once nobody holds it, the thread is told to stop
        weakref.finalize(self, self._wake.put, _STOP)

    def submit(self, fn: Callable[..., Any], *args: Any, priority: int = WANTED) -> Future:
        """Queue ``fn(*args)``; its future holds the result or the exception. RuntimeError after ``shutdown``."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the compute thread was shut down")
            heapq.heappush(self._heap, (priority, next(self._order), future, fn, args))
        self._wake.put(True)
        return future

    def call(self, fn: Callable[..., T], *args: Any, priority: int = URGENT) -> T:
        """``fn(*args)`` on the compute thread, waited for (run in place when called from that thread)."""
        if self.on_thread():
            return fn(*args)
        return self.submit(fn, *args, priority=priority).result()

    def on_thread(self) -> bool:
        """Whether the caller is the compute thread."""
        return threading.current_thread() is self._thread

    def shutdown(self, wait: bool = False) -> None:
        """Cancel what is queued and stop after the running call; ``wait``: until it has finished (not from the
        compute thread itself)."""
        with self._lock:
            self._closed = True
            for item in self._heap:
                item[2].cancel()
            self._heap.clear()
        self._wake.put(_STOP)
        if wait and not self.on_thread():
            self._thread.join()


def _serve(heap: list, lock: threading.Lock, wake: queue.SimpleQueue) -> None:
    """The compute thread's loop: for each wake-up, run the most urgent queued call; end on ``_STOP``."""
    while wake.get() is not _STOP:
        with lock:
            if not heap:  # cancelled by shutdown
                continue
            _, _, future, fn, args = heapq.heappop(heap)
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # the caller sees it on the future
                future.set_exception(exc)
        del future, fn, args  # hold nothing (a segmenter's bound method) while waiting for the next call


def run_passing(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a new thread that ends with it (OpenMP frees that thread's team), waited for; for rare
    work that must not wait behind the compute thread's queue."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="passing")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
