"""Where the benchmark scripts find the project's shared/ data: $MEDSAMKIT_SHARED, else shared/ beside (or
inside) the checkout. One rule for every script; the test suite applies the same search order in
tests/shared_data.py (tests never import from benchmarks/)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The first of $MEDSAMKIT_SHARED, ../shared, ./shared that holds a data/ folder, else None."""
    env = os.environ.get("MEDSAMKIT_SHARED")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (cand / "data").is_dir():
            return cand
    return None


def monuseg_dir(split: str | None = None) -> Path | None:
    """shared/data/monuseg (or its train/test split) when it holds images, else None."""
    base = shared_dir()
    if base is None:
        return None
    root = base / "data" / "monuseg"
    folder = root / split if split else root
    probe = folder / "images" if split else root / "test" / "images"
    return folder if probe.is_dir() else None
