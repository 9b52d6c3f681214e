"""THE interactive click loop (Mazurowski's protocol), one copy for evaluation, the baseline, fine-tuning
and the annotation server.

A ``ClickSession`` holds a batch of objects under one prompt mode: their current prompts, their last
low-res logits (fed back as the mask prompt of the next call) and their history. A step is: ask
``pending()`` which objects need a model call, run the model on ``inputs(idx)``, ``record`` the results,
then ``advance()``: each recorded object gets its next corrective click (the error pixel farthest from the
error region's border), or, when its mask equals the truth, is finished; its remaining steps then repeat
its last result (``repeated=True``) so every object yields a full 1..N curve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from medsamkit.core.prompt_modes import PromptMode, parse_mode
from medsamkit.prompts.simulate import Prompt, initial_prompt, next_click

# predict_batch(prompts, mask_inputs or None) -> (masks (P,H,W) bool, predicted IoU (P,), low-res logits or None)
BatchPredict = Callable[[list[Prompt], np.ndarray | None], tuple[np.ndarray, np.ndarray, np.ndarray | None]]
# predict(prompt, mask_input or None) -> (mask (H,W), low-res logits or None, predicted IoU)
SinglePredict = Callable[[Prompt, np.ndarray | None], tuple[np.ndarray, np.ndarray | None, float]]


@dataclass
class StepResult:
    """One model call of a prompt mode; ``repeated`` marks steps copied after the error vanished."""

    prompt: Prompt
    mask: np.ndarray
    predicted_iou: float
    seconds: float = 0.0
    repeated: bool = False


class ClickSession:
    """Prompts, fed-back logits and per-step results of ``mode`` for a batch of objects (truth masks)."""

    def __init__(self, mode: PromptMode | str, truths: Sequence[np.ndarray],
                 rngs: Sequence[np.random.Generator], image_shape: tuple[int, ...] | None = None) -> None:
        if len(truths) != len(rngs):
            raise ValueError(f"{len(truths)} truth masks but {len(rngs)} generators")
        self.mode = parse_mode(mode) if isinstance(mode, str) else mode
        self.truths = [np.asarray(t).astype(bool, copy=False) for t in truths]
        self.rngs = list(rngs)
        self.prompts = [initial_prompt(self.mode, t, r, image_shape) for t, r in zip(self.truths, self.rngs)]
        self.logits: list[np.ndarray | None] = [None] * len(truths)
        self.history: list[list[StepResult]] = [[] for _ in truths]
        self.finished = [False] * len(truths)
        self.step = 0
        self._recorded: list[int] = []

    @property
    def n_steps(self) -> int:
        """Model calls the mode makes per object."""
        return self.mode.n_steps

    @property
    def over(self) -> bool:
        """True when every step has run or every object is finished."""
        return self.step >= self.n_steps or all(self.finished)

    def pending(self) -> list[int]:
        """Objects that need a model call at this step."""
        return [] if self.step >= self.n_steps else [i for i, f in enumerate(self.finished) if not f]

    def inputs(self, idx: Sequence[int]) -> tuple[list[Prompt], np.ndarray | None]:
        """The prompts of objects ``idx`` and their mask prompts (P,1,m,m), None before the first result."""
        logits = [self.logits[i] for i in idx]
        if not idx or any(x is None for x in logits):
            return [self.prompts[i] for i in idx], None
        return [self.prompts[i] for i in idx], np.stack(logits)[:, None]

    def record(self, idx: Sequence[int], masks: np.ndarray, ious: Sequence[float],
               logits: np.ndarray | None = None, seconds: Sequence[float] | float = 0.0) -> None:
        """Store the model's answer for objects ``idx``: masks (P,H,W), predicted IoUs, low-res logits."""
        secs = [float(seconds)] * len(idx) if np.isscalar(seconds) else list(seconds)
        for j, i in enumerate(idx):
            mask = np.asarray(masks[j]).astype(bool, copy=False)
            if mask.shape != self.truths[i].shape:
                raise ValueError(f"predictor returned a mask of shape {mask.shape}, truth is {self.truths[i].shape}")
            self.history[i].append(StepResult(self.prompts[i], mask, float(ious[j]), secs[j]))
            self.logits[i] = None if logits is None else np.asarray(logits[j])
        self._recorded = list(idx)

    def advance(self) -> None:
        """Next step: a corrective click for each object recorded in this step, or finish it if it is exact."""
        self.step += 1
        if self.step >= self.n_steps:
            return
        for i in self._recorded:
            click = next_click(self.history[i][-1].mask, self.truths[i], self.rngs[i])
            if click is None:
                self.finished[i] = True
            else:
                self.finished[i] = False
                self.prompts[i] = self.prompts[i].with_click(*click)
        self._recorded = []

    def results(self) -> list[list[StepResult]]:
        """Per object, one StepResult per step (finished objects padded with repeats of their last one)."""
        out = []
        for steps in self.history:
            padded = list(steps)
            while steps and len(padded) < self.n_steps:
                last = padded[-1]
                padded.append(StepResult(last.prompt, last.mask, last.predicted_iou, 0.0, repeated=True))
            out.append(padded)
        return out

    def run(self, predict_batch: BatchPredict, timed: bool = True) -> list[list[StepResult]]:
        """Drive every step with ``predict_batch``; each call's time is shared among its objects."""
        import time

        while not self.over:
            idx = self.pending()
            prompts, mask_input = self.inputs(idx)
            t0 = time.perf_counter()
            masks, ious, logits = predict_batch(prompts, mask_input)
            dt = (time.perf_counter() - t0) / len(idx) if timed else 0.0
            self.record(idx, masks, ious, logits, dt)
            self.advance()
        return self.results()


def run_interactive(mode: PromptMode | str, truth_mask: np.ndarray, predict: SinglePredict,
                    rng: np.random.Generator, image_shape: tuple[int, ...] | None = None) -> list[StepResult]:
    """One object through the click session with a one-prompt ``predict(prompt, mask_input)``."""

    def batch(prompts: list[Prompt], mask_input: np.ndarray | None):
        mask, logits, q = predict(prompts[0], None if mask_input is None else mask_input[0, 0])
        return np.asarray(mask)[None], [q], None if logits is None else np.asarray(logits)[None]

    return ClickSession(mode, [truth_mask], [rng], image_shape).run(batch, timed=False)[0]
