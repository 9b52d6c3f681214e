"""The model's answers to a person's prompts and the memory of one prompt session's answers, which gives the
click semantics of ``medsamkit.prompts``: a prompt that is a remembered prompt plus one click is decoded with
that answer's low-res logits as the mask prompt (``Prompt.with_click``; ``ClickSession.inputs``), and a prompt
already answered (a click undone) is answered from memory, as it was.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from medsamkit.prompts.simulate import Prompt, parent_signature, prompt_signature

ViewKey = tuple  # (image id, axis, slice), + (window,) for a tile of a 2D image (annotate.session.views)
ANSWERS_KEPT = 48  # per view of a prompt session: enough to undo a long click session


@dataclass
class Answer:
    """The model's answer to one prompt: candidates (C, H, W), their predicted IoU, the best one's logits."""

    prompt: Prompt
    masks: np.ndarray
    iou: np.ndarray
    logits: np.ndarray  # (C, m, m) low-res logits of every candidate
    seconds: float
    mask_from: int | None  # the previous answer's candidate whose logits went in as mask prompt
    ranked: bool = False  # candidates come best first (a click search), not by predicted IoU

    @property
    def mask_prompted(self) -> bool:
        """True when the previous answer's logits went in as the mask prompt."""
        return self.mask_from is not None

    def best(self) -> int:
        """Index of the best candidate: the first of a ranked answer, else the highest predicted IoU."""
        return 0 if self.ranked else int(np.argmax(self.iou))


class AnswerMemory:
    """The answers one prompt session got, per model view, the most recent last. ``generation`` is the model's
    (``Segmenter.generation``): after a hot swap the old logits must not prompt the new decoder."""

    def __init__(self) -> None:
        self._views: dict[ViewKey, OrderedDict[tuple, Answer]] = {}
        self.generation = 0

    def follow(self, generation: int) -> None:
        """Forget everything answered by another model than ``generation``."""
        if generation != self.generation:
            self._views.clear()
            self.generation = generation

    def parent(self, key: ViewKey, prompt: Prompt, multimask: bool) -> Answer | None:
        """The remembered answer to ``prompt`` without its last click (None without clicks)."""
        if not len(prompt.points):
            return None
        return self._views.get(key, {}).get((parent_signature(prompt), multimask))

    def get(self, key: ViewKey, prompt: Prompt, multimask: bool) -> Answer | None:
        """The remembered answer to exactly ``prompt`` (made the most recent)."""
        answers = self._views.get(key)
        sig = (prompt_signature(prompt), multimask)
        if answers is None or sig not in answers:
            return None
        answers.move_to_end(sig)
        return answers[sig]

    def put(self, key: ViewKey, multimask: bool, answer: Answer) -> None:
        """Remember ``answer``; full-resolution candidates are large: only the recent ones are kept."""
        answers = self._views.setdefault(key, OrderedDict())
        answers[(prompt_signature(answer.prompt), multimask)] = answer
        while len(answers) > ANSWERS_KEPT:
            answers.popitem(last=False)
