"""The one 3D engine: a 3D box prompt (a z-range and a 2D box on one slice) becomes a 3D mask, clicks correct it.

Propagation extends ``volumes.propagate``: from the box's slice the answer walks up and down, each slice
prompted with boxes from the previous slice's answer, and it never leaves the z-range. Two things keep it from
shrinking or drifting, as the plain walk does with a box-only model (see ``propagate``): the offset between the
given box and the model's answer on the box's slice is measured once and added to every propagated box (a
model that under-segments inside a tight box is given the margin it needed there), and each slice chooses
between that box and the given box itself (a second seed on every slice of the range), by predicted IoU plus
agreement (IoU) with the previous slice. The model's output that answers the object is chosen once, on the box's
slice: the multimask output whose answer fills the given box best (box IoU of its tight box) when it fills it
clearly better than the single output (a box-only model under-segments some objects inside their tight box, and
its larger multimask answer does not); with it, re-propagation after a click stops where an answer outgrows the
slice it came from. Every answer (propagated or clicked) is kept inside the given box
grown by ``slack`` x its size on each side, stretched to hold every positive click (a box-only model's answer
can leak into the organ around the object). A direction stops where the answer falls under ``min_area`` px or
``min_iou`` predicted IoU, or its area changes by more than ``max_area_change`` times from slice to slice
(0: off), or (an object started by a click, which has no z-range) under ``end_fraction`` x its largest slice so
far; the object has ended there and the slices beyond (up to an anchor) are cleared.

A click on slice k corrects that slice with the clicks machinery (``prompts.clicks.ClickAnswerer``: the native
point path, or on box-only models the click search and the mask edits of ``prompts.corrections``), the slice
becomes an anchor that propagation never overwrites, and the answer re-propagates from k both ways until a
slice agrees (Dice >= ``agree``) with what is already there or what is there fits the corrected neighbour at
least as well (IoU), an anchor, or the object's end; an end met there does not clear the slices beyond (only a
click that empties its own slice does: a negative click that shrank a slice made its neighbours' answers vanish
and erased the object's far part on volumes resliced from builtin:lung-gtv). A click's answer that grows past
``max_growth`` x the object's largest slice (a box-only model's "thing under the click" can be the organ around
the object) is replaced by the click's own disk edit (``prompts.corrections.disk_edit``). A positive click
outside the z-range extends it. Without a box (the challenge starts some cases from clicks), the first click on
the empty object is answered by the clicks machinery alone (on a box-only model: the click search) and
propagates through the whole volume until the object ends, with no calibration, seed box or region (made from
the first answer's tight box, they carried the object past its ends or cut it on builtin:lung-gtv) and without
the growth guard (below). Settings: docs/protocols.md "Interactive 3D".

The engine's slice-to-slice step is the project's only one: ``walk`` with ``EngineSettings.plain`` (each slice
prompted with the previous answer's box grown by ``margin`` px, through the whole volume, never into anchors)
is ``volumes.propagate.propagate_from`` (``segment-volume --propagate/--box-slice``) and the annotator's
propagation (``annotate.model.propagation``: the person's corrected views are the anchors).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.metrics import dice, iou
from medsamkit.prompts import Prompt, tight_box
from medsamkit.prompts.boxes import FIT_MARGIN, fitted_answer
from medsamkit.prompts.click_masks import enforce
from medsamkit.prompts.clicks import ClickAnswerer
from medsamkit.prompts.corrections import CorrectionSettings, disk_edit
from medsamkit.prompts.search_settings import SearchSettings
from medsamkit.volumes.slices import SliceEmbedder


@dataclass(frozen=True)
class Box3D:
    """A 3D box prompt: slices ``z_min..z_max`` and a 2D box (x0, y0, x1, y1, pixels of array[z]) on slice ``z``."""

    z_min: int
    z_max: int
    z: int
    box: tuple[float, float, float, float]

    @classmethod
    def of_truth(cls, truth: np.ndarray) -> Box3D:
        """The CVPR 2025 challenge's prompt of a class: its z-range and its 2D box on the middle slice (the
        non-empty slice nearest the middle when the middle one is empty)."""
        zs = np.flatnonzero(np.asarray(truth).reshape(len(truth), -1).any(1))
        if not len(zs):
            raise InputError("cannot build a 3D box: the class is empty")
        mid = (int(zs[0]) + int(zs[-1])) // 2
        z = int(zs[np.argmin(np.abs(zs - mid))])
        x0, y0, x1, y1 = (float(v) for v in tight_box(truth[z]))
        return cls(int(zs[0]), int(zs[-1]), z, (x0, y0, x1, y1))

    def check(self, shape: tuple[int, ...], source: str = "volume") -> Box3D:
        """The box, or InputError naming ``source`` when it does not fit a (Z, Y, X) volume of ``shape``."""
        z_count, h, w = shape
        if not 0 <= self.z_min <= self.z <= self.z_max < z_count:
            raise InputError(f"{source}: 3D box needs 0 <= z_min <= z <= z_max < {z_count}, got z_min={self.z_min}, "
                             f"z={self.z}, z_max={self.z_max}")
        x0, y0, x1, y1 = self.box
        if not (0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h):
            raise InputError(f"{source}: box {self.box} must satisfy 0 <= x0 <= x1 < {w} and 0 <= y0 <= y1 < {h}")
        return self


def calibrated_box(box: np.ndarray, offset: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``box`` (x0, y0, x1, y1) moved side by side by ``offset``, inside an image of ``shape`` (h, w); a side moved
    past its opposite one stops at their middle (an offset measured on a larger slice can invert a small box)."""
    h, w = shape
    moved = np.asarray(box, dtype=np.float32) + np.asarray(offset, dtype=np.float32)
    middle = (moved[:2] + moved[2:]) / 2
    moved = np.concatenate([np.minimum(moved[:2], middle), np.maximum(moved[2:], middle)])
    return np.clip(moved, 0, np.array([w - 1, h - 1, w - 1, h - 1], dtype=np.float32))


def parse_box3d(text: str) -> Box3D:
    """``'z_min,z_max,z,x0,y0,x1,y1'`` (voxel indices of the [z, y, x] array) -> a Box3D."""
    try:
        vals = [float(v) for v in str(text).split(",")]
    except ValueError:
        vals = []
    if len(vals) != 7 or any(v != int(v) for v in vals[:3]):
        raise InputError(f"3D box {text!r} must be z_min,z_max,z,x0,y0,x1,y1 (three integer slices, then a box)")
    return Box3D(int(vals[0]), int(vals[1]), int(vals[2]), (vals[3], vals[4], vals[5], vals[6]))


@dataclass(frozen=True)
class EngineSettings:
    """How the engine propagates and when it stops (chosen on builtin:lung-gtv, docs/protocols.md)."""

    calibrate: float = 1.0  # x the given box's offset from the model's answer on its slice, added to each box
    seed_box: bool = True  # the given box is a candidate on every slice of the range
    min_area: int = 5  # px: a smaller answer means the object has ended
    min_iou: float = 0.0  # predicted IoU under this: the object has ended (0: off)
    max_area_change: float = 0.0  # area ratio between neighbouring slices beyond this: ended (0: off)
    # an object started by a click (no z-range) has also ended where the answer is under this x its largest slice so
    # far (0: off): past its true ends the walk found thin slivers of the tissue around it. Chosen on the axial
    # builtin:lung-gtv volumes (0 / 0.03 / 0.05 / 0.1: DSC AUC 2.095 / 2.098 / 2.134 / 2.123; docs/protocols.md)
    end_fraction: float = 0.05
    agree: float = 0.95  # re-propagation stops at a slice whose answer agrees (Dice) with what is there
    reach: int = 3  # re-propagation after a click goes at most this many slices each way (0: no limit)
    slack: float = 0.5  # answers are kept inside the given box grown by this x its size each side (0: off)
    max_growth: float = 2.0  # a click's answer larger than this x the object's largest slice: a disk
    clicks: str = "auto"  # prompts.clicks strategy: auto, native, search, mixed
    search: SearchSettings | None = None  # the click search's settings (default: the hand-set ranking)
    margin: float = 0.0  # px added on every side of each propagated box
    # the model's output that answers the object: on the box's slice, the multimask output whose answer's tight box
    # fits the given box best (box IoU) when it fits better than the single output's by more than this (None: the
    # single output always). A box-only model under-segments some objects inside their tight box (builtin:lung-gtv
    # pat_1: 4,620 px of a 5,689 px slice) where its larger multimask answer fills the box (docs/protocols.md)
    head_margin: float | None = FIT_MARGIN
    # with a multimask output, re-propagation after a click stops where an answer grows past this x the slice it
    # came from (0: off): that output, larger by design, grew toward the object's tapering ends
    head_regrow: float = 1.0

    @classmethod
    def plain(cls, min_area: int = 20, min_iou: float = 0.0, margin: float = 0.0) -> EngineSettings:
        """The plain walk (``volumes.propagate``, the annotator's propagation): each slice prompted with the
        previous answer's box grown by ``margin`` px alone, no z-range, seed box, calibration or region."""
        return cls(calibrate=0.0, seed_box=False, min_area=min_area, min_iou=min_iou, slack=0.0, margin=margin,
                   head_margin=None)


@dataclass
class EngineState:
    """The object being segmented: its mask, z-range, anchored slices and clicks so far."""

    mask: np.ndarray
    z_min: int = 0
    z_max: int = -1
    offset: np.ndarray = field(default_factory=lambda: np.zeros(4, dtype=np.float32))
    seed: np.ndarray | None = None
    region: tuple[float, float, float, float] | None = None  # where answers may lie (x0, y0, x1, y1)
    anchors: set[int] = field(default_factory=set)
    clicks: dict[int, list[tuple[float, float, int]]] = field(default_factory=dict)
    started_by_click: bool = False  # no box: the first click's answer began the object
    head: int | None = None  # the multimask output answering the object's propagation (None: the single output)


class VolumeEngine:
    """One object in one volume: ``start(box3d)`` answers a 3D box, ``click(z, y, x, positive)`` corrects."""

    def __init__(self, embedder: SliceEmbedder, settings: EngineSettings | None = None) -> None:
        self.embedder = embedder
        self.settings = settings or EngineSettings()
        # the slice's own growth cut is off: a slice where propagation lost the object is the wrong reference
        # for a click's size; the engine guards growth against the whole object instead (``_bounded``)
        self.answerer = ClickAnswerer(embedder.predictor, self.settings.clicks, self.settings.search,
                                      corrections=replace(CorrectionSettings(), max_growth=0.0))
        # before a box (an object started by clicks alone): the whole volume is the range
        self.state = EngineState(np.zeros(embedder.image01.shape, dtype=bool), 0, embedder.image01.shape[0] - 1)
        self.trace: list[dict] = []  # every slice visited: z, area, predicted IoU, what happened

    @property
    def mask(self) -> np.ndarray:
        """The current 3D mask (Z, Y, X) bool (a copy)."""
        return self.state.mask.copy()

    def start(self, box3d: Box3D) -> np.ndarray:
        """Segment the object of a 3D box from scratch; the box's slice becomes an anchor."""
        b = box3d.check(self.embedder.image01.shape, self.embedder.source or "volume")
        box = np.asarray(b.box, dtype=np.float32)
        st = self.state = EngineState(np.zeros(self.embedder.image01.shape, dtype=bool), b.z_min, b.z_max,
                                      seed=box if self.settings.seed_box else None)
        answer, predicted, st.head = self._box_answer(b.z, box)
        st.mask[b.z] = answer
        if answer.any():
            st.offset = box - tight_box(answer).astype(np.float32)
        x0, y0, x1, y1 = b.box
        grow = self.settings.slack * max(x1 - x0, y1 - y0)
        st.region = (x0 - grow, y0 - grow, x1 + grow, y1 + grow)
        st.mask[b.z] &= self._allowed()
        st.anchors.add(b.z)
        self.trace.append({"z": b.z, "area": int(answer.sum()), "iou": round(predicted, 4), "event": "box",
                           "head": st.head})
        for step in (1, -1):
            self._walk(b.z, step, None)
        return self.mask

    def walk(self, z: int, mask: np.ndarray, steps: tuple[int, ...] = (1, -1), anchors: Collection[int] = ()
             ) -> np.ndarray:
        """Propagate ``mask`` (the answer on slice ``z``) through the whole volume in each of ``steps`` (+1 up,
        -1 down), never into ``anchors`` (slices a person corrected); returns the new 3D mask."""
        z_count = self.embedder.image01.shape[0]
        if not 0 <= z < z_count:
            raise InputError(f"start slice {z} is outside the volume (0..{z_count - 1})")
        st = self.state = EngineState(np.zeros(self.embedder.image01.shape, dtype=bool), 0, z_count - 1)
        st.mask[z] = mask
        st.anchors = {int(a) for a in anchors} | {z}
        for step in steps:
            self._walk(z, step, None)
        return self.mask

    def _box_answer(self, z: int, box: np.ndarray) -> tuple[np.ndarray, float, int | None]:
        """The given box's answer on its slice z, its predicted IoU and the output that gave it: the multimask
        output whose answer's tight box fits ``box`` best, when it fits better than the single output's by more
        than ``head_margin``, else the single output (None)."""
        predictor = self.embedder.use(z)
        if self.settings.head_margin is None:
            single = predictor.predict(boxes=box[None])
            return single.masks[0, 0], float(single.iou[0, 0]), None
        pred, heads = fitted_answer(predictor, box[None], self.settings.head_margin)
        return pred.masks[0, 0], float(pred.iou[0, 0]), None if heads[0] < 0 else int(heads[0])

    def ended(self, mask: np.ndarray, predicted_iou: float, previous: np.ndarray) -> bool:
        """Whether an answer says the object has ended: under ``min_area`` px or ``min_iou`` predicted IoU, its area
        changed more than ``max_area_change`` times from ``previous``, or (started by a click) it is under
        ``end_fraction`` x the object's largest slice."""
        s = self.settings
        area, before = int(mask.sum()), max(int(previous.sum()), 1)
        changed = s.max_area_change > 0 and max(area / before, before / max(area, 1)) > s.max_area_change
        sliver = s.end_fraction > 0 and self.state.started_by_click and area < s.end_fraction * self._largest_slice()
        return area < max(s.min_area, 1) or predicted_iou < s.min_iou or changed or sliver

    def click(self, z: int, y: int, x: int, positive: bool) -> np.ndarray:
        """Correct slice ``z`` with a click at (x, y), anchor it, and re-propagate from it both ways (on an
        empty object, the first click starts it: propagation then runs until the object ends)."""
        st = self.state
        starts = not st.mask.any()
        st.started_by_click |= starts
        shape = st.mask.shape
        if not (0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]):
            raise InputError(f"click ({z}, {y}, {x}) is outside the volume {shape}")
        if positive:
            st.z_min, st.z_max = min(st.z_min, z), max(st.z_max, z)
        st.clicks.setdefault(z, []).append((float(x), float(y), int(bool(positive))))
        pts = np.array([c[:2] for c in st.clicks[z]], dtype=np.float32)
        labels = np.array([c[2] for c in st.clicks[z]], dtype=np.int32)
        current = st.mask[z]
        native_box = tight_box(current) if self.answerer.strategy == "native" and current.any() else None
        self.embedder.use(z)
        # a started object's click corrects what is there; an empty one's clicks are answered alone
        pred = self.answerer.answer([Prompt(box=native_box, points=pts, labels=labels)],
                                    parents=None if starts else [(current, 1.0)])
        if positive and st.region is not None:
            st.region = (min(st.region[0], x), min(st.region[1], y), max(st.region[2], x), max(st.region[3], y))
        answer = pred.masks[0, 0] & self._allowed()
        st.mask[z] = self._bounded(answer, z, pts[-1], int(bool(positive)))
        st.anchors.add(z)
        self.trace.append({"z": z, "area": int(st.mask[z].sum()), "iou": round(float(pred.iou[0, 0]), 4),
                           "event": "click+" if positive else "click-"})
        for step in (1, -1):
            self._walk(z, step, None if starts else self.settings.agree)
        return self.mask

    def _allowed(self) -> np.ndarray:
        """Where answers may lie: the given box grown by ``slack`` x its size each side, stretched to hold every
        positive click (everywhere when slack is 0)."""
        st, (h, w) = self.state, self.state.mask.shape[1:]
        out = np.zeros((h, w), dtype=bool)
        if self.settings.slack <= 0 or st.region is None:
            out[:] = True
            return out
        x0, y0, x1, y1 = st.region
        out[max(int(y0), 0) : int(np.ceil(y1)) + 1, max(int(x0), 0) : int(np.ceil(x1)) + 1] = True
        return out

    def _bounded(self, answer: np.ndarray, z: int, xy: np.ndarray, label: int) -> np.ndarray:
        """A click's answer, or the click's own disk edit when the answer grew past ``max_growth`` x the object's
        largest slice (the model's 'thing under the click' was the organ around the object, not a missed part of
        it). The whole object is the reference, not the slices near the click: where propagation lost the object,
        those are nearly empty and the right answer is many times their size. An object started by a click has no
        such reference (its first answer can be a part of it: on builtin:lung-gtv without a box, mean Dice after
        5 clicks 0.27 with the guard, 0.46 without), so there every answer is kept."""
        st = self.state
        growth = self.settings.max_growth
        if growth <= 0 or st.started_by_click or answer.sum() <= growth * self._largest_slice():
            return answer
        edited = disk_edit(st.mask[z], xy, label, self.answerer.corrections)
        return enforce(edited, xy[None], np.array([label]))

    def _largest_slice(self) -> int:
        """The area (px) of the object's largest slice so far."""
        mask = self.state.mask
        return int(np.count_nonzero(mask.reshape(len(mask), -1), axis=1).max())

    # --- propagation ----------------------------------------------------------------------------------
    def _answer(self, z: int, previous: np.ndarray) -> tuple[np.ndarray, float]:
        """Slice ``z``'s answer from the previous slice's: the calibrated box of it, or the seed box, whichever
        scores more (predicted IoU + IoU with the previous answer)."""
        st, h, w = self.state, *self.state.mask.shape[1:]
        grow = self.settings.margin * np.array([-1, -1, 1, 1], dtype=np.float32)
        boxes = [calibrated_box(tight_box(previous), self.settings.calibrate * st.offset + grow, (h, w))]
        if st.seed is not None:
            boxes.append(st.seed)
        pred = self.embedder.use(z).predict(boxes=np.stack(boxes).astype(np.float32), multimask=st.head is not None)
        masks, ious = (pred.masks[:, st.head], pred.iou[:, st.head]) if st.head is not None else pred.best()[:2]
        masks = masks & self._allowed()
        scores = [float(ious[i]) + iou(masks[i], previous) for i in range(len(masks))] if len(masks) > 1 else [0]
        best = int(np.argmax(scores))
        return masks[best], float(ious[best])

    def _walk(self, start: int, step: int, agree: float | None) -> None:
        """Propagate from slice ``start`` in direction ``step`` within the z-range, up to an anchor; with
        ``agree``, stop at the first slice whose answer agrees with what is there."""
        st = self.state
        previous, z = st.mask[start], start + step
        while st.z_min <= z <= st.z_max and z not in st.anchors:
            if agree is not None and self.settings.reach and abs(z - start) > self.settings.reach:
                return
            if not previous.any():
                self._clear_from(z, step)
                return
            answer, predicted = self._answer(z, previous)
            if agree is not None and self._regrows(answer, previous):
                self.trace.append({"z": z, "area": int(answer.sum()), "iou": round(predicted, 4), "event": "regrows"})
                return
            if self.ended(answer, predicted, previous):
                self.trace.append({"z": z, "area": int(answer.sum()), "iou": round(predicted, 4), "event": "ended"})
                if agree is None:  # after a click, what propagation found beyond stays (``click``)
                    self._clear_from(z, step)
                return
            if agree is not None and (dice(answer, st.mask[z]) >= agree
                                      or iou(st.mask[z], previous) >= iou(answer, previous)):
                self.trace.append({"z": z, "area": int(answer.sum()), "iou": round(predicted, 4), "event": "agrees"})
                return
            st.mask[z] = answer
            self.trace.append({"z": z, "area": int(answer.sum()), "iou": round(predicted, 4), "event": "propagated"})
            previous, z = answer, z + step

    def _regrows(self, answer: np.ndarray, previous: np.ndarray) -> bool:
        """Whether a re-propagated answer of a multimask output grew past ``head_regrow`` x the slice it came from."""
        cap = self.settings.head_regrow
        return self.state.head is not None and cap > 0 and int(answer.sum()) > cap * int(previous.sum())

    def _clear_from(self, z: int, step: int) -> None:
        """The object has ended: clear slices from ``z`` on in direction ``step`` up to an anchor."""
        st = self.state
        while 0 <= z < st.mask.shape[0] and z not in st.anchors:
            st.mask[z] = False
            z += step
