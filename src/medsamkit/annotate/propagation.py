"""Propagating a volume's object through its slices with the project's engine
(``medsamkit.volumes.propagate.propagate_from``), steered by the person, and per-view corrections.

A run starts from the object's mask on a view (axis, slice): the next view is prompted with that mask's
tight box (grown by ``margin``), exactly as the engine steps from slice to slice. Each direction stops at the
first view whose prediction is below ``min_area`` px or below ``min_iou`` predicted IoU, at the volume's edge,
or before a view the person corrected: corrections are never overwritten, and a run started from a
corrected view re-propagates from it. Views an earlier run painted beyond where this run stopped are
cleared (up to the next correction), so the object is always what the last runs say. A run is one undoable
change; its settings, per-view IoU/area and stop reasons go to the object's log.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.predictor import Predictor
from medsamkit.prompts import Prompt, tight_box
from medsamkit.volumes.propagate import enlarge, propagate_from
from medsamkit.volumes.slices import SliceEmbedder

DIRECTIONS = {"up": (1,), "down": (-1,), "both": (1, -1)}
NAMES = {1: "up", -1: "down"}


class Propagator:
    """Slice embedders per (volume, axis) over the session's embedding cache, with a predictor of their own
    (the interactive predictor stays free while a run walks through the volume)."""

    def __init__(self, segmenter, keep: int = 2) -> None:
        self.segmenter = segmenter
        self.predictor = Predictor(segmenter.model)
        self._embedders: OrderedDict[tuple, SliceEmbedder] = OrderedDict()
        self._keep = keep
        self.lock = threading.Lock()

    def embedder(self, entry, axis: int) -> SliceEmbedder:
        """The slice embedder of a volume's axis: re-propagation finds its embeddings in memory (the 48 most
        recent, ~4 MB each for LiteMedSAM) or in the session's disk cache, so nothing is encoded twice."""
        if self.predictor.model is not self.segmenter.model:  # the session swapped its model (fine-tuning)
            self.predictor = Predictor(self.segmenter.model)
            self._embedders.clear()
        key = (entry.id, axis, id(entry.loaded().image01))
        if key not in self._embedders:
            self._embedders[key] = SliceEmbedder(self.predictor, entry.stack(axis), entry.three_slice,
                                                 entry.id, max_cached=48, cache=self.segmenter.cache)
            while len(self._embedders) > self._keep:
                self._embedders.popitem(last=False)
        self._embedders.move_to_end(key)
        return self._embedders[key]


def view_records(record: dict, axis: int) -> dict[int, dict]:
    """The object's per-view entries on ``axis`` (slice -> entry)."""
    prefix = f"{axis}:"
    return {int(k[len(prefix):]): v for k, v in (record.get("slices") or {}).items() if k.startswith(prefix)}


def corrected_views(record: dict, axis: int) -> set[int]:
    """Views of ``axis`` the person made or corrected (propagation never enters them)."""
    return {k for k, v in view_records(record, axis).items() if v.get("source") == "person"}


def _stop(trace: list, step: int, n: int, stop_at: set[int], min_area: int, min_iou: float,
          start: int) -> dict:
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


def _stale(views: dict[int, dict], stop: dict, step: int, n: int, corrected: set[int]) -> list[int]:
    """Views an earlier run painted beyond this run's stop (up to the next correction): cleared."""
    if stop["reason"] in ("volume edge", "corrected slice"):
        return []
    out, z = [], stop["slice"]
    while 0 <= z < n and z not in corrected:
        if views.get(z, {}).get("source") == "propagated":
            out.append(z)
        z += step
    return out


def propagate_object(ws, propagator: Propagator, image: str, object_id: int, axis: int, slice_index: int,
                     direction: str = "both", min_iou: float = 0.0, min_area: int = 20,
                     margin: float = 0.0) -> dict:
    """Run the engine from the object's mask on view (axis, slice); paint, save, report per view and stops."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be up, down or both, got {direction!r}")
    if not 0.0 <= float(min_iou) <= 1.0 or int(min_area) < 0 or float(margin) < 0:
        raise InputError("thresholds: 0 <= min_iou <= 1, min_area >= 0, margin >= 0")
    entry = ws.source.entry(image)
    if entry.kind != "volume":
        raise InputError(f"image {image!r} is 2D: propagation needs a volume")
    axis, k = entry.check_view(axis, slice_index)
    with ws.lock, propagator.lock:
        state = ws.state(image)
        record = state.record_of(object_id)
        start = state.view_mask(object_id, axis, k)
        if not start.any():
            raise InputError(f"object {object_id} has no pixels on slice {k} (axis {axis}): commit or correct "
                             "it there first")
        t0 = time.perf_counter()
        embedder = propagator.embedder(entry, axis)
        encoded_before = len(embedder.encoded)
        n, shape = embedder.image01.shape[0], start.shape
        views, corrected = view_records(record, axis), corrected_views(record, axis) - {k}
        masks, entries, stops, visited = {}, {}, [], []
        for step in DIRECTIONS[direction]:
            trace: list = []
            first = k + step
            if 0 <= first < n and first not in corrected:
                box = enlarge(tight_box(start), margin, shape)
                out = propagate_from(embedder, first, Prompt(box=box), min_area, margin, min_iou, trace,
                                     steps=(step,), stop_at=corrected)
                for z, area, iou, kept in trace:
                    visited.append({"slice": int(z), "iou": float(iou), "area": int(area), "kept": bool(kept),
                                    "direction": NAMES[step]})
                    if kept:
                        masks[int(z)] = out[z]
                        entries[int(z)] = {"source": "propagated", "iou": float(iou), "area": int(area),
                                           "from": k}
            stop = {**_stop(trace, step, n, corrected, min_area, min_iou, k), "direction": NAMES[step]}
            stops.append(stop)
            for z in _stale(views, stop, step, n, corrected):
                masks[z] = np.zeros(shape, dtype=bool)
                entries[z] = {"source": "cleared", "area": 0, "from": k}
        seconds = time.perf_counter() - t0
        run = {"axis": axis, "start": k, "direction": direction, "min_iou": float(min_iou),
               "min_area": int(min_area), "margin": float(margin), "stops": stops,
               "slices": len(visited), "encoded": len(embedder.encoded) - encoded_before,
               "seconds": round(seconds, 3), **ws.segmenter.identity,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        state.paint_views(object_id, axis, masks, entries, run)
        saved = ws.save(image)
    return {**saved, "object": object_id, "axis": axis, "start": k, "visited": sorted(visited, key=lambda v: v["slice"]),
            "stops": stops, "seconds": round(seconds, 3), "encoded": run["encoded"],
            "seconds_per_slice": round(seconds / max(len(visited), 1), 4)}


def correct_view(ws, image: str, object_id: int, axis: int, slice_index: int, candidate: int | None) -> dict:
    """The current answer on a view replaces an object's pixels there (the view counts as corrected)."""
    entry = ws.source.entry(image)
    if entry.kind != "volume":
        raise InputError(f"image {image!r} is 2D: correct an object by deleting and committing it")
    axis, k = entry.check_view(axis, slice_index)
    key = (image, axis, k)
    with ws.lock:
        session, answer, index = ws.candidate_of(
            key, candidate, "nothing to correct with: prompt the model on this slice first")
        state = ws.state(image)
        state.record_of(object_id)
        state.correct_view(object_id, axis, k, answer.masks[index], {
            "prompt": answer.prompt.as_dict(), "candidate": index, "predicted_iou": round(float(answer.iou[index]), 4),
            "clicks": session.clicks, "seconds": round(time.time() - session.started, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        ws.clear(image, axis, k)
        return {**ws.save(image), "corrected": {"object": object_id, "axis": axis, "slice": k}}
