"""The settings of `medsamkit evaluate-volume` and the volume datasets it opens (shared by its two runs: the
prompt variants of ``volumes.evaluate`` and the interactive protocol of ``volumes.protocol``)."""

from __future__ import annotations

from dataclasses import dataclass

from medsamkit.embedding.resources import LocalResources
from medsamkit.io.datasets import Dataset
from medsamkit.io.windowing import parse_window
from medsamkit.predictor import Predictor


@dataclass
class EvaluateVolumeConfig:
    """Everything `medsamkit evaluate-volume` needs; the CLI only fills this in."""

    data: str
    out: str
    prompts: str = "box"
    propagate: bool | list[bool] = False
    three_slice: bool | list[bool] = False
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    window: str | None = None
    max_images: int | None = None  # at most N volumes
    classes: str | None = None  # label values to evaluate (comma list); None: all
    seed: int = 0
    min_area: int = 20
    margin: float = 0.0
    min_iou: float = 0.0
    tolerances_mm: tuple[float, ...] = (1.0, 2.0)
    save_masks: bool = False
    predictions: str | None = None  # score these NIfTI masks instead of running a model
    cache: str | None = None  # embedding cache folder (medsamkit.embedding.cache)
    protocol: str | None = None  # "cvpr25": the CVPR 2025 interactive protocol (volumes.protocol) instead of variants
    clicks: str = "auto"  # how the protocol's clicks become masks (prompts.clicks strategies)
    click_ranker: str | None = None  # the click search's ranking from `medsamkit fit-clicks`
    start: str = "box"  # the protocol's first interaction: "box" (the 3D box) or "clicks" (none: clicks only)
    show_progress: bool = True


# settings whose change makes earlier rows in the same folder incomparable (variants are keyed by name)
VOLUME_RESULT_KEYS = ("data", "model", "model_sha256", "checkpoint", "window", "classes", "seed", "min_area",
                      "margin", "min_iou", "tolerances_mm", "predictions", "protocol")


def volume_kind(spec: str) -> str | None:
    """The label kind a volume SPEC is opened with (class maps; builtin datasets say their own)."""
    return "class" if not str(spec).startswith("builtin:") else None


def open_volume_dataset(spec: str, window: str | tuple[float, float] | None = None) -> Dataset:
    """A dataset of volumes for a SPEC (builtin:lung-gtv, IMAGE::LABEL, nnU-Net folder, DICOM folder)."""
    from medsamkit.io.datasets import open_dataset

    return open_dataset(spec, volume_kind(spec), window)


def local_volume_resources(spec: str, window: str | None, max_images: int | None,
                           predictor: Predictor | None) -> tuple[LocalResources, int]:
    """A volume batch job's local resources (the first ``max_images`` volumes of SPEC, keyed as its tasks look
    them up with ``item(spec, window, volume_kind(spec), i)``) and how many volumes there are."""
    dataset = open_volume_dataset(spec, parse_window(window)).head(max_images)
    return LocalResources(predictor, {(spec, window, volume_kind(spec)): dataset}), len(dataset)
