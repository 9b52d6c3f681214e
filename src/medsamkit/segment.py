"""Segment one image file from explicit prompts (the `segment` verb)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.core.runtime import select_device
from medsamkit.io.images import read_image, write_mask
from medsamkit.models import load_model
from medsamkit.predictor import Predictor
from medsamkit.prompts.clicks import ClickAnswerer
from medsamkit.prompts.search_settings import search_settings
from medsamkit.prompts.simulate import Prompt


@dataclass
class SegmentConfig:
    """Inputs of `medsamkit segment`."""

    image: str
    out: str
    boxes: list[list[float]] = field(default_factory=list)
    points: list[tuple[list[float], int]] = field(default_factory=list)
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    multimask: bool = False
    clicks: str = "auto"  # how clicks become masks (prompts.clicks)
    click_ranker: str | None = None  # the click search's ranking from `medsamkit fit-clicks`
    box_output: str = "single"  # which output answers a box alone: single, or fit (prompts.boxes)


def segment_image(cfg: SegmentConfig) -> list[dict]:
    """Run the prompts, write the label mask (prompt i -> label i+1, later prompts on top); return per-prompt rows."""
    if not cfg.boxes and not cfg.points:
        raise InputError("give at least one --box or --point")
    if cfg.boxes and cfg.points and len(cfg.points) != len(cfg.boxes):
        raise InputError(f"{len(cfg.points)} points for {len(cfg.boxes)} boxes: with boxes, give one point per box")
    image = read_image(cfg.image)
    device = select_device(cfg.device)
    predictor = Predictor(load_model(cfg.model, cfg.checkpoint, device))
    predictor.set_image(image, source=cfg.image)
    answerer = ClickAnswerer(predictor, cfg.clicks, search_settings(cfg.click_ranker), box_output=cfg.box_output)
    masks, iou, _ = answerer.answer(_prompts(cfg), cfg.multimask).best()
    label = np.zeros(masks.shape[1:], dtype=np.uint16 if len(masks) > 255 else np.uint8)
    for i, m in enumerate(masks):
        label[m] = i + 1
    write_mask(Path(cfg.out), label)
    return [
        {"prompt": i + 1, "predicted_iou": round(float(q), 4), "area_px": int(m.sum()),
         **({"clicks": answerer.strategy} if cfg.points else {})}
        for i, (m, q) in enumerate(zip(masks, iou))
    ]


def _prompts(cfg: SegmentConfig) -> list[Prompt]:
    """One prompt per box (with its point), or ONE prompt of all the points when there are no boxes."""
    def clicks(pairs: list[tuple[list[float], int]]) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([p for p, _ in pairs], dtype=np.float32).reshape(-1, 2),
                np.array([lab for _, lab in pairs], dtype=np.int64))

    if not cfg.boxes:
        return [Prompt(None, *clicks(cfg.points))]
    return [Prompt(np.array(box, dtype=np.float32), *clicks(cfg.points[i : i + 1]))
            for i, box in enumerate(cfg.boxes)]
