"""Where a click's time goes: the click search (``prompts.search.search``, the answer to a click alone on the bundled
box-only LiteMedSAM) timed per stage on an embedded image, in-process (no HTTP).

The image is builtin:dsb-nuclei's (512 x 512, the annotator latency benchmark's); each click is a positive click at
the centre of one of its nuclei. Per click: the whole search, and inside it the decoder (``decode_boxes``: every
batched decode of candidate boxes, the answer's tightening included), the ranking (``own_features`` and ``rank``:
the candidates' features and scores), and the boxes grown from the image content (``similar_boxes``); "other" is
the rest (box making, the masks' bookkeeping). Medians over --rounds rounds of --clicks clicks, each round timing
every click once (so a slow moment of the machine spreads over all stages). Prints JSON.

Usage: python benchmarks/search_stages.py [--clicks 20] [--rounds 3] [--threads 2] [--smoke]
(--smoke: 2 clicks, 1 round)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

import medsamkit.prompts.search as search_module
from _shared import add_smoke, apply_smoke
from medsamkit.core.objects import extract_objects
from medsamkit.core.runtime import setup
from medsamkit.io.datasets import open_dataset
from medsamkit.models import load_model
from medsamkit.predictor import Predictor
from medsamkit.prompts.search_settings import SearchSettings

STAGES = {"decoder": ("decode_boxes",), "ranking": ("own_features", "rank"), "grown_boxes": ("similar_boxes",)}


class StageClock:
    """Seconds spent in the ``STAGES`` of ``prompts.search``, each call counted once (a stage's function called
    inside another of the same stage is not counted twice)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth: dict[str, int] = defaultdict(int)

    def install(self) -> None:
        """Wrap the stages' functions in ``prompts.search`` (the names it calls them by)."""
        for stage, names in STAGES.items():
            for name in names:
                if hasattr(search_module, name):  # an older search may lack one
                    setattr(search_module, name, self._timed(stage, getattr(search_module, name)))

    def _timed(self, stage: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            self._depth[stage] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[stage] -= 1
                if not self._depth[stage]:
                    self.seconds[stage] += time.perf_counter() - t0
                    self.calls[stage] += 1

        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, (), clicks=2, rounds=1)
    setup(threads=args.threads)
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    predictor = Predictor(load_model("litemedsam"))
    predictor.set_image(case.image)
    model, emb = predictor.model, predictor.embedding
    objects = extract_objects(case.label)[: args.clicks]
    clicks = [np.argwhere(o.mask(case.label.shape)).mean(0)[::-1][None] * predictor.coordinate_scale()
              for o in objects]
    settings = SearchSettings()
    clock = StageClock()
    clock.install()
    for click in clicks[:2]:  # warm-up: first calls allocate
        search_module.search(model, emb.features, emb.input_size, click, np.array([1]), settings)
    times: dict[str, list[float]] = defaultdict(list)
    boxes = []
    for _ in range(args.rounds):
        for click in clicks:
            clock.reset()
            t0 = time.perf_counter()
            cands, _ = search_module.search(model, emb.features, emb.input_size, click, np.array([1]), settings)
            total = time.perf_counter() - t0
            times["search"].append(total)
            for stage in STAGES:
                times[stage].append(clock.seconds[stage])
            times["other"].append(total - sum(clock.seconds[s] for s in STAGES))
            times["decoder_calls"].append(clock.calls["decoder"])
            boxes.append(len(cands))
    print(json.dumps({
        "image": "builtin:dsb-nuclei (512 x 512)", "clicks": len(clicks), "rounds": args.rounds,
        "threads": args.threads, "load_avg_1min": round(os.getloadavg()[0], 2),
        "median_ms": {k: round(1000 * statistics.median(times[k]), 1) for k in ("search", *STAGES, "other")},
        "share_of_search": {k: round(sum(times[k]) / sum(times["search"]), 3) for k in (*STAGES, "other")},
        "decodes_per_click": statistics.median(times["decoder_calls"]),
        "candidates_per_click": statistics.median(boxes)}))


if __name__ == "__main__":
    main()
