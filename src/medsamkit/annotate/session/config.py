"""The inputs of `medsamkit annotate` (``AnnotateConfig``) and where a session writes by default."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class AnnotateConfig:
    """Inputs of `medsamkit annotate`."""

    source: str
    out: str | None = None
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    clicks: str = "auto"  # how clicks are answered: auto, native or search (prompts.clicks)
    click_ranker: str | None = None  # the click search's ranking from `medsamkit fit-clicks`
    box_output: str = "single"  # which output answers a box alone: single, or fit (prompts.boxes)
    class_names: list[str] = field(default_factory=list)  # --class-names: the classes a person assigns
    token: bool = True
    window: str | None = None  # volumes: the model input's CT window (name or lo,hi); None: the SPEC's rule
    three_slice: bool = False  # volumes: slices k-1, k, k+1 as the model's three channels
    learn: bool = False  # learn rounds start by themselves (annotate.model.learning)
    learn_min_objects: int = 20
    learn_budget: float = 180.0  # seconds per learn round
    monailabel: bool = False  # also serve MONAI Label's REST API under /monailabel/TOKEN/ (annotate.http.monailabel)
    prefetch: bool = True  # embed a large image's tiles in the background after its first tiled answer


def default_out(source: str) -> Path:
    """FOLDER/annotations for a folder; ./annotations for a builtin or file SPEC."""
    path = Path(source)
    return path / "annotations" if path.is_dir() else Path("annotations")
