"""Propagating an object through a volume's views with the project's one 3D engine
(``medsamkit.volumes.engine.VolumeEngine.walk``, the step ``segment-volume`` and ``evaluate-volume`` use),
steered by the person.

A run starts from the object's mask on a view (axis, slice): the next view is prompted with that mask's tight
box (grown by ``margin``), exactly as the engine steps from slice to slice. Each direction stops at the first
view whose prediction is below ``min_area`` px or below ``min_iou`` predicted IoU, at the volume's edge, or
before a view the person corrected: corrections are never overwritten, and a run started from a corrected
view re-propagates from it. Views an earlier run painted beyond where this run stopped are cleared (up to the
next correction), so the object is always what the last runs say. The session paints a run's views as one
undoable change and logs its settings, per-view IoU/area and stop reasons.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from medsamkit.annotate.model.host import ModelHost
from medsamkit.core.errors import InputError
from medsamkit.predictor import Predictor
from medsamkit.volumes.engine import EngineSettings, VolumeEngine
from medsamkit.volumes.propagate import walk_trace
from medsamkit.volumes.slices import SliceEmbedder

DIRECTIONS = {"up": (1,), "down": (-1,), "both": (1, -1)}
NAMES = {1: "up", -1: "down"}


@dataclass(frozen=True)
class PropagationSettings:
    """Where a run goes and when it stops."""

    direction: str = "both"
    min_iou: float = 0.0
    min_area: int = 20
    margin: float = 0.0

    def check(self) -> PropagationSettings:
        """The settings, or InputError naming what is out of range."""
        if self.direction not in DIRECTIONS:
            raise InputError(f"direction must be up, down or both, got {self.direction!r}")
        if not 0.0 <= float(self.min_iou) <= 1.0 or int(self.min_area) < 0 or float(self.margin) < 0:
            raise InputError("thresholds: 0 <= min_iou <= 1, min_area >= 0, margin >= 0")
        return self


@dataclass
class PropagationRun:
    """What a run found: masks and log entries of the views it changes, per direction where and why it
    stopped, every view it visited (slice, IoU, area, kept), encoder passes and seconds."""

    masks: dict[int, np.ndarray]
    entries: dict[int, dict]
    stops: list[dict]
    visited: list[dict]
    encoded: int
    seconds: float


def _stop(trace: list, step: int, n: int, start: int, min_area: int) -> dict:
    """Where and why a direction stopped, from the engine's trace of that direction."""
    if trace and not trace[-1][3]:
        z, area, iou, _ = trace[-1]
        reason = "area below minimum" if area < max(min_area, 1) else "IoU below threshold"
        return {"slice": int(z), "reason": reason, "area": int(area), "iou": float(iou)}
    last = trace[-1][0] if trace else start
    nxt = last + step
    if not 0 <= nxt < n:
        return {"slice": int(last), "reason": "volume edge"}
    return {"slice": int(nxt), "reason": "corrected slice"}


def _stale(painted: set[int], stop: dict, step: int, n: int, corrected: set[int]) -> list[int]:
    """Views an earlier run painted beyond this run's stop (up to the next correction): cleared."""
    if stop["reason"] in ("volume edge", "corrected slice"):
        return []
    out, z = [], stop["slice"]
    while 0 <= z < n and z not in corrected:
        if z in painted:
            out.append(z)
        z += step
    return out


class Propagator:
    """Slice embedders per (volume, axis) over the host's embedding cache, with a predictor of their own (the
    interactive predictor keeps its embedding while a run walks through the volume; the run itself is one call on
    the session's compute thread, ``Segmenter.run``)."""

    def __init__(self, host: ModelHost, keep: int = 2) -> None:
        self.host = host
        self.predictor = Predictor(host.model)
        self._embedders: OrderedDict[tuple, SliceEmbedder] = OrderedDict()
        self._keep = keep

    def embedder(self, key: tuple, stack: np.ndarray, three_slice: bool) -> SliceEmbedder:
        """The slice embedder of a volume's axis (``key`` names it): re-propagation finds its embeddings in
        memory (the 48 most recent, ~4 MB each for LiteMedSAM) or in the disk cache, so nothing is encoded
        twice."""
        if self.predictor.model is not self.host.model:  # a learned model is served now
            self.predictor = Predictor(self.host.model)
            self._embedders.clear()
        if key not in self._embedders:
            self._embedders[key] = SliceEmbedder(self.predictor, stack, three_slice, str(key[0]), max_cached=48,
                                                 cache=self.host.cache)
            while len(self._embedders) > self._keep:
                self._embedders.popitem(last=False)
        self._embedders.move_to_end(key)
        return self._embedders[key]

    def run(self, key: tuple, stack: np.ndarray, three_slice: bool, start: np.ndarray, k: int,
            corrected: set[int], painted: set[int], settings: PropagationSettings) -> PropagationRun:
        """Propagate the mask ``start`` of view ``k`` up and/or down ``stack`` (views of one axis), never into
        ``corrected`` views; ``painted``: views earlier runs painted (cleared beyond where this run stops)."""
        s = settings.check()
        t0 = time.perf_counter()
        embedder = self.embedder(key, stack, three_slice)
        encoded_before = len(embedder.encoded)
        n, shape = embedder.image01.shape[0], start.shape
        masks, entries, stops, visited = {}, {}, [], []
        for step in DIRECTIONS[s.direction]:
            trace: list = []
            first = k + step
            if 0 <= first < n and first not in corrected:
                engine = VolumeEngine(embedder, EngineSettings.plain(s.min_area, s.min_iou, s.margin))
                out = engine.walk(k, start, (step,), corrected)
                trace = walk_trace(engine.trace)
                for z, area, iou, kept in trace:
                    visited.append({"slice": int(z), "iou": float(iou), "area": int(area), "kept": bool(kept),
                                    "direction": NAMES[step]})
                    if kept:
                        masks[int(z)] = out[z]
                        entries[int(z)] = {"source": "propagated", "iou": float(iou), "area": int(area), "from": k}
            stop = {**_stop(trace, step, n, k, s.min_area), "direction": NAMES[step]}
            stops.append(stop)
            for z in _stale(painted, stop, step, n, corrected):
                masks[z] = np.zeros(shape, dtype=bool)
                entries[z] = {"source": "cleared", "area": 0, "from": k}
        return PropagationRun(masks, entries, stops, sorted(visited, key=lambda v: v["slice"]),
                              len(embedder.encoded) - encoded_before, time.perf_counter() - t0)
