"""Process-wide runtime setup, applied once: device choice, CPU threads and the glibc allocator setting.

Why the allocator: on CPU, torch frees and re-maps the encoder's large activations on every call; with
glibc's default thresholds each of those is an mmap/munmap plus page faults, which made the LiteMedSAM
encoder 2-6x slower here (docs/facts.md). Raising the mmap and trim thresholds keeps the memory in the heap.
Users can opt out with MEDSAMKIT_NO_MALLOPT=1.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1
_state: dict[str, object] = {}


def tune_allocator() -> bool:
    """Raise glibc's mmap/trim thresholds (once per process); returns True when applied."""
    if "allocator" in _state:
        return bool(_state["allocator"])
    applied = False
    if sys.platform.startswith("linux") and os.environ.get("MEDSAMKIT_NO_MALLOPT") != "1":
        try:
            libc = ctypes.CDLL("libc.so.6")
            applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, _INT_MAX)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
            )
        except OSError:  # not glibc (musl, macOS): nothing to tune
            applied = False
    _state["allocator"] = applied
    return applied


def select_device(requested: str | None = None) -> torch.device:
    """The device to run on: the requested one, else cuda when available, else cpu."""
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            from medsamkit.core.errors import InputError

            raise InputError(f"device {requested!r} requested but CUDA is not available")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(device: str | None = None, threads: int | None = None) -> torch.device:
    """Apply the allocator setting and thread count (env MEDSAMKIT_THREADS, else all cores); pick the device."""
    tune_allocator()
    n = threads or int(os.environ.get("MEDSAMKIT_THREADS", "0")) or (os.cpu_count() or 1)
    if _state.get("threads") != n:
        torch.set_num_threads(n)
        _state["threads"] = n
    return select_device(device)
