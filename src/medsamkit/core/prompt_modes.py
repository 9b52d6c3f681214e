"""Prompt modes (the protocol names ``box``, ``box+K``, ``jitter+K``, ``center``, ``randomN``, ``iterN``,
``box+iterN``; docs/protocols.md) and their parsing from CLI lists."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from medsamkit.core.errors import InputError

DEFAULT_K = 5
VALID_FORMS = "box, box+K (box+ = box+5), jitter+K (jitter = jitter+5), center, randomN, iterN, box+iterN"

_MODE_PATTERN = re.compile(
    r"^(?:(?P<box>box)|box\+(?P<boxk>\d*)|jitter(?:\+(?P<jitk>\d*))?|(?P<center>center)"
    r"|random(?P<randn>\d+)|iter(?P<itern>\d+)|box\+iter(?P<boxitern>\d+))$"
)


@dataclass(frozen=True)
class PromptMode:
    """A prompt protocol: ``kind`` with its parameter ``k`` (margin/jitter in px, or number of points)."""

    name: str
    kind: str
    k: int

    @property
    def interactive(self) -> bool:
        """True for the corrective-click modes (``iterN``, ``box+iterN``)."""
        return self.kind in ("iter", "box+iter")

    @property
    def n_points(self) -> int:
        """Points (or clicks) the final prompt holds."""
        if self.kind == "center":
            return 1
        if self.kind in ("random", "iter", "box+iter"):
            return self.k
        return 0

    @property
    def n_steps(self) -> int:
        """Model calls: N for ``iterN``, 1 + N for ``box+iterN`` (the box alone first), else 1."""
        if self.kind == "iter":
            return self.k
        if self.kind == "box+iter":
            return self.k + 1
        return 1

    @property
    def uses_box(self) -> bool:
        """True when the prompt carries a box."""
        return self.kind in ("box", "box+", "jitter", "box+iter")


def parse_mode(text: str) -> PromptMode:
    """One prompt mode from its CLI name, e.g. ``"box+5"``, ``"random3"``, ``"box+iter3"``."""
    name = str(text).strip().lower()
    match = _MODE_PATTERN.match(name)
    if match is None:
        raise InputError(f"unknown prompt mode {text!r}; valid forms: {VALID_FORMS}")
    groups = match.groupdict()
    if groups["box"]:
        return PromptMode("box", "box", 0)
    if groups["boxk"] is not None:
        k = int(groups["boxk"]) if groups["boxk"] else DEFAULT_K
        return PromptMode(f"box+{k}", "box+", k)
    if groups["center"]:
        return PromptMode("center", "center", 1)
    if name.startswith("jitter"):
        k = int(groups["jitk"]) if groups["jitk"] else DEFAULT_K
        return PromptMode(f"jitter+{k}", "jitter", k)
    for group, kind in (("randn", "random"), ("itern", "iter"), ("boxitern", "box+iter")):
        if groups[group] is not None:
            n = int(groups[group])
            if n < 1:
                raise InputError(f"prompt mode {text!r} needs N >= 1; valid forms: {VALID_FORMS}")
            return PromptMode(f"{kind}{n}", kind, n)
    raise AssertionError(f"unhandled prompt mode {text!r}")  # the pattern admits nothing else


def parse_modes(spec: str | Iterable[str]) -> list[PromptMode]:
    """Prompt modes from a comma-separated list (or an iterable of names); duplicates are kept once."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    modes: list[PromptMode] = []
    for part in parts:
        if not str(part).strip():
            continue
        mode = parse_mode(part)
        if mode not in modes:
            modes.append(mode)
    if not modes:
        raise InputError(f"no prompt modes given; valid forms: {VALID_FORMS}")
    return modes
