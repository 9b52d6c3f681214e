"""Data SPECs -> datasets of 2D cases: `open_dataset`, what every batch verb calls with its --data.

What a SPEC is and which reader opens it is decided by `medsamkit.io.spec.resolve_spec`. Volumes are served
slice by slice (axial), with their spacing and slice index recorded. The case types live in
`medsamkit.io.cases` and are re-exported here for the modules that open datasets.
"""

from __future__ import annotations

from pathlib import Path

from medsamkit.io.cases import Case, Dataset, VolumeCase
from medsamkit.io.spec import resolve_spec

__all__ = ["Case", "Dataset", "VolumeCase", "open_dataset"]


def open_dataset(spec: str | Path, kind: str | None = None, window: str | tuple[float, float] | None = None) -> Dataset:
    """Open a data SPEC (``io.spec``) as labelled cases; InputError with the reason when it is not usable.

    ``window`` (a CT/MR intensity window: a name, "lo,hi" or (lo, hi)) applies to volume SPECs; 2D images
    ignore it.
    """
    return resolve_spec(spec).open(kind, window)
