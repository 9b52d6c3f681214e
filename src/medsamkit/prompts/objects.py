"""The click session run with a Predictor on the objects of one tile: what evaluation, fine-tuning's
validation and the annotation server's simulated users share (one path from prompt to mask)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medsamkit.core.objects import ImageObject, Window
from medsamkit.core.prompt_modes import PromptMode
from medsamkit.core.seeds import name_key, object_rng
from medsamkit.predictor import Predictor
from medsamkit.prompts.clicks import ClickAnswerer
from medsamkit.prompts.search_settings import SearchSettings
from medsamkit.prompts.session import BatchPredict, ClickSession, StepResult
from medsamkit.prompts.simulate import Prompt


@dataclass
class ObjectRun:
    """The outcome of one prompt mode on one object: one StepResult per model call."""

    obj: ImageObject
    steps: list[StepResult] = field(default_factory=list)

    @property
    def prompts(self) -> list[Prompt]:
        return [s.prompt for s in self.steps]

    @property
    def masks(self) -> list[np.ndarray]:
        return [s.mask for s in self.steps]

    @property
    def pred_iou(self) -> list[float]:
        return [s.predicted_iou for s in self.steps]

    @property
    def seconds(self) -> list[float]:
        return [s.seconds for s in self.steps]


def object_rngs(objects: list[ImageObject], mode: PromptMode, seed: int, case_key: int) -> list[np.random.Generator]:
    """One generator per object of a case and mode: the same draws in every workflow that prompts it."""
    return [object_rng(seed, case_key, o.label, name_key(mode.name)) for o in objects]


def predictor_batch(predictor: Predictor, multimask: bool = False, clicks: str = "auto",
                    search: SearchSettings | None = None, box_output: str = "single") -> BatchPredict:
    """A session's ``predict_batch`` backed by the predictor's current embedding (best mask per prompt),
    clicks answered by the ``clicks`` strategy (``prompts.clicks``; ``search``: the click search's settings), a box
    alone by the ``box_output`` (``prompts.boxes``)."""
    answerer = ClickAnswerer(predictor, clicks, search, box_output=box_output)

    def predict(prompts: list[Prompt], mask_input: np.ndarray | None):
        masks, q, low = answerer.answer(prompts, multimask, mask_input).best()
        return masks, q, low

    return predict


def run_mode(objects: list[ImageObject], window: Window, mode: PromptMode, seed: int, case_key: int,
             predict_batch: BatchPredict) -> list[ObjectRun]:
    """One prompt mode for all objects of one tile through ``predict_batch`` (model or baseline)."""
    if not objects:
        return []
    shape = (window[2] - window[0], window[3] - window[1])
    truths = [o.mask_in(window) for o in objects]
    session = ClickSession(mode, truths, object_rngs(objects, mode, seed, case_key), shape)
    return [ObjectRun(o, steps) for o, steps in zip(objects, session.run(predict_batch))]


def run_mode_model(predictor: Predictor, objects: list[ImageObject], window: Window, mode: PromptMode,
                   seed: int, case_key: int, multimask: bool = False, clicks: str = "auto",
                   search: SearchSettings | None = None, box_output: str = "single") -> list[ObjectRun]:
    """One prompt mode for all objects of one tile (the predictor holds the tile's embedding)."""
    return run_mode(objects, window, mode, seed, case_key,
                    predictor_batch(predictor, multimask, clicks, search, box_output))
