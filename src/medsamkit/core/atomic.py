"""Atomic file writes: write a temporary file in the target's folder, then rename it over the target.

A reader (or a resumed run) sees either the old file or the new one, never a truncated one; the temporary
name carries the process id and a random part, so several processes (or Dask workers) writing the same
path at once each rename a complete file and the last rename wins.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fh)`` on a temporary binary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (``default=str`` for paths and numpy scalars) atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=str))


def save_torch_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (a crash mid-write never leaves a truncated checkpoint)."""
    import torch  # only the checkpoint writers need torch here

    return write_atomic(path, lambda fh: torch.save(obj, fh))


def save_npz_atomic(path: str | Path, compressed: bool = True, **arrays: Any) -> Path:
    """``numpy.savez(_compressed)`` to ``path`` atomically."""
    import numpy as np

    save = np.savez_compressed if compressed else np.savez
    return write_atomic(path, lambda fh: save(fh, **arrays))
