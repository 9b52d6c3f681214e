"""The project's 3D engine (``medsamkit.volumes.engine.VolumeEngine``) behind the annotator: a 3D box (a range of
views of one axis and a 2D box on one of them) becomes an object on every view the engine reaches, and a click
on any view of that axis corrects the view and re-propagates from it, answered exactly as ``evaluate-volume
--protocol cvpr25`` and ``segment-volume --box3d`` answer (same engine, same default settings; the session's
``--clicks`` strategy and ``--click-ranker`` ranking answer its clicks, as they answer the 2D views').

One engine per (client, volume, object, axis), kept while it is used (the least recently used go first). Before
each click the engine takes the object as the session has it (what undo, a 2D correction or the Propagate button
did to it on that axis; the person's corrected views become its anchors), so the engine and the page never
disagree. An object the engine did not start (a 2D commit, a restart) gets an engine on its first click, with
the object's extent on the axis as its range.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.prompts.search_settings import SearchSettings
from medsamkit.volumes.engine import Box3D, EngineSettings, EngineState, VolumeEngine
from medsamkit.volumes.slices import SliceEmbedder

EngineKey = tuple[str, str, int, int]  # (client, volume, object, axis)


@dataclass
class EngineRun:
    """What one engine step changed: the views' new masks and their log entries, the engine's trace of the
    step, the encoder passes and the seconds it took."""

    masks: dict[int, np.ndarray]
    entries: dict[int, dict]
    trace: list[dict]
    encoded: int
    seconds: float


class Engines3D:
    """The engines of the session's clients, each over the slice embedder of its volume's axis (the propagator's:
    no view is encoded twice)."""

    def __init__(self, keep: int = 16, clicks: str = "auto", search: SearchSettings | None = None) -> None:
        self._engines: OrderedDict[EngineKey, VolumeEngine] = OrderedDict()
        self._keep = keep
        self.settings = EngineSettings(clicks=clicks, search=search)  # the defaults, answering clicks as asked

    def bind(self, key: EngineKey, engine: VolumeEngine) -> None:
        """Keep ``engine`` as the one of ``key`` (client, volume, object, axis), the most recently used."""
        self._engines[key] = engine
        self._engines.move_to_end(key)
        while len(self._engines) > self._keep:
            self._engines.popitem(last=False)

    def start(self, embedder: SliceEmbedder, box: Box3D, source: str) -> tuple[VolumeEngine, EngineRun]:
        """A new object from a 3D box on the views of ``embedder``'s axis; the engine is kept by ``bind``."""
        box.check(embedder.image01.shape, source)
        t0 = time.perf_counter()
        engine = VolumeEngine(embedder, self.settings)
        before = len(embedder.encoded)
        mask = engine.start(box)
        masks = {int(z): mask[z] for z in np.flatnonzero(mask.reshape(len(mask), -1).any(1))}
        if box.z not in masks:
            raise InputError(f"{source}: the model found nothing in the 3D box on slice {box.z}: draw it again")
        entries = {z: {"source": "person" if z == box.z else "propagated", "area": int(m.sum()), "from": box.z}
                   for z, m in masks.items()}
        return engine, EngineRun(masks, entries, list(engine.trace), len(embedder.encoded) - before,
                                 time.perf_counter() - t0)

    def click(self, key: EngineKey, embedder: SliceEmbedder, current: np.ndarray, anchors: set[int], k: int, y: int,
              x: int, positive: bool) -> EngineRun:
        """Correct view ``k`` of the object (its mask on the axis is ``current``, the person's views ``anchors``)
        with a click at (x, y) and re-propagate from it; the views whose mask changed."""
        t0 = time.perf_counter()
        engine = self._engines.get(key)
        if engine is None:  # an object the engine did not start: its extent on the axis is the range
            zs = np.flatnonzero(current.reshape(len(current), -1).any(1))
            state = EngineState(current, int(zs.min()) if len(zs) else k, int(zs.max()) if len(zs) else k)
        else:
            state = engine.state
        if engine is None or engine.embedder is not embedder:  # new, or another model / reloaded views now
            engine = VolumeEngine(embedder, self.settings)
            engine.state = state
        engine.state.mask = current.copy()
        engine.state.anchors |= {int(a) for a in anchors}
        before = len(embedder.encoded)
        seen = len(engine.trace)
        mask = engine.click(k, y, x, positive)
        changed = np.flatnonzero((mask != current).reshape(len(mask), -1).any(1))
        masks = {int(z): mask[z] for z in changed}
        masks.setdefault(k, mask[k])
        entries = {z: {"source": "propagated", "area": int(m.sum()), "from": k} for z, m in masks.items()}
        entries[k] = {"source": "person", "area": int(mask[k].sum()), "click": [x, y, int(bool(positive))]}
        self.bind(key, engine)
        return EngineRun(masks, entries, engine.trace[seen:], len(embedder.encoded) - before,
                         time.perf_counter() - t0)
