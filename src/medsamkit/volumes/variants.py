"""The ways of prompting a volume that evaluate-volume compares, named as they appear in its tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medsamkit.prompts import PromptMode, parse_modes


@dataclass(frozen=True)
class Variant:
    """One way of prompting a volume: a prompt mode, slice-wise or propagated, 1 or 3 slices per input."""

    mode: PromptMode
    propagate: bool = False
    three_slice: bool = False
    min_iou: float = 0.0  # propagation's predicted-IoU floor

    @property
    def name(self) -> str:
        """e.g. ``box``, ``propagate:box+5``, ``propagate:box@iou0.8``, ``box/3slice``."""
        base = f"propagate:{self.mode.name}" if self.propagate else self.mode.name
        if self.propagate and self.min_iou > 0:
            base += f"@iou{self.min_iou:g}"
        return base + ("/3slice" if self.three_slice else "")


def variants(prompts: str, propagate: bool | Sequence[bool] = False,
             three_slice: bool | Sequence[bool] = False, min_iou: float = 0.0) -> list[Variant]:
    """All combinations of the prompt modes with the propagate / three-slice choices given."""
    props = [propagate] if isinstance(propagate, bool) else list(propagate)
    threes = [three_slice] if isinstance(three_slice, bool) else list(three_slice)
    return [Variant(m, p, t, min_iou if p else 0.0) for t in threes for p in props for m in parse_modes(prompts)]
