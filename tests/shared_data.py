"""Where the test suite finds the project's shared/ data, and what a test does when a data set is absent.

Candidates, in order: $MEDSAMKIT_SHARED, shared/ beside the checkout, shared/ inside it; a data set
is taken from the first candidate that holds it (shared/data/NAME). A missing data set skips the test
with a reason naming where it was looked for, except when the environment variable CI is "true":
there it fails, because a CI run must not pass by skipping its real-data tests. The benchmark scripts
keep their own locator (benchmarks/_shared.py) so that tests never import from benchmarks/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ENV = "MEDSAMKIT_SHARED"


def shared_candidates(repo: Path = REPO) -> list[Path]:
    """The folders that may be shared/, in the order they are tried."""
    env = os.environ.get(SHARED_ENV)
    return ([Path(env)] if env else []) + [repo.parent / "shared", repo / "shared"]


def in_ci() -> bool:
    """True when the environment variable CI is "true" (any case), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() == "true"


def require_data(name: str, what: str, probe: str = "", repo: Path = REPO) -> Path:
    """shared/data/NAME when NAME/PROBE exists; otherwise fail under CI=true, else skip, saying why."""
    for cand in shared_candidates(repo):
        if (cand / "data" / name / probe).is_dir():
            return cand / "data" / name
    looked = ", ".join(str(c / "data" / name / probe) for c in shared_candidates(repo))
    if in_ci():
        pytest.fail(
            f"{what} not found (looked for {looked}); CI=true requires the shared data: "
            f"set {SHARED_ENV} to the shared/ folder",
            pytrace=False,
        )
    pytest.skip(f"{what} not found (looked for {looked}): set {SHARED_ENV} or place shared/ beside the checkout")
