"""Predict latency of the annotator's view rule on a real MoNuSeg test image (1000 px, nuclei on native tiles):
the first box on a nucleus before the tiles are prefetched (its tile's embedding is computed: the cost of the
rule), a second box on the same nucleus (embedded tile), a box answered on the embedded whole view (the old
path), then the tiles prefetched after the first tiled answer (seconds) and first boxes on other nuclei; all
in the same run on a fresh embedding cache. Box Dice of both views is reported too.

Prints JSON and writes benchmarks/results/annotate_view_latency.json (with the 1-minute load average).
Usage: python benchmarks/annotate_view_latency.py [--objects 12] [--device cpu]   (--smoke: 2 objects)

The prefetch is waited for with the segmenter's public ``prefetching`` / ``wait_idle``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import add_smoke, apply_smoke, require_shared, shared_dir  # noqa: E402
from medsamkit.annotate.model.answers import AnswerMemory  # noqa: E402
from medsamkit.annotate.session.config import AnnotateConfig  # noqa: E402
from medsamkit.annotate.session.views import whole_window  # noqa: E402
from medsamkit.annotate.session.workspace import Workspace  # noqa: E402
from medsamkit.core import runtime  # noqa: E402
from medsamkit.core.atomic import write_json_atomic  # noqa: E402
from medsamkit.core.objects import extract_objects  # noqa: E402
from medsamkit.io.images import read_label  # noqa: E402
from medsamkit.metrics import dice  # noqa: E402
from medsamkit.prompts.simulate import Prompt  # noqa: E402


def _ms(values: list[float]) -> dict:
    return {"median_ms": round(1000 * statistics.median(values), 1), "calls": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=12)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="benchmarks/results/annotate_view_latency.json")
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, ("out",), objects=2)
    runtime.setup(args.device)
    shared = require_shared(shared_dir(), "MoNuSeg test (shared/data/monuseg)")
    src = sorted((shared / "data" / "monuseg" / "test" / "images").iterdir())[0]
    root = Path(tempfile.mkdtemp(prefix="annotate-views-"))
    try:
        folder = root / "monuseg"
        (folder / "labels").mkdir(parents=True)
        shutil.copy(src, folder / src.name)
        label = read_label(shared / "data" / "monuseg" / "test" / "labels" / src.name)
        shutil.copy(shared / "data" / "monuseg" / "test" / "labels" / src.name, folder / "labels" / src.name)
        ws = Workspace(AnnotateConfig(str(folder), out=str(root / "out"), device=args.device))
        image_id = ws.source.ids[0]
        key, pixels = ws.view(image_id)
        ws.open(image_id)  # the whole view embedded, as when the person opens the image
        ws.cfg.prefetch = False  # phase 1 measures tiles embedded on demand: no prefetch yet
        every = [o for o in extract_objects(label) if o.area >= 80]
        objects = every[:: max(1, len(every) // args.objects)][: args.objects]
        others = every[1 :: max(1, len(every) // args.objects)][: args.objects]
        new_tile, embedded_tile, whole, d_tile, d_whole, tiles = [], [], [], [], [], set()
        for obj in objects:
            box = obj.box().tolist()
            for times, grow in ((new_tile, 1), (embedded_tile, 0)):
                t0 = time.perf_counter()  # a grown box first: the tight one (scored) is a new prompt on its tile
                ws.predict(image_id, 0, None, [box[0] - grow, box[1] - grow, box[2] + grow, box[3] + grow], [],
                           multimask=True)
                times.append(time.perf_counter() - t0)
            tiles.add(ws.prompts.get("", key).window)
            truth = obj.mask(pixels.shape[:2])
            answer = ws.prompts.get("", key).answer
            d_tile.append(dice(answer.masks[answer.best()], truth))
            ws.clear(image_id)
            t0 = time.perf_counter()
            old = ws.segmenter.answer(key, pixels, Prompt(box=box), True, None, AnswerMemory())
            whole.append(time.perf_counter() - t0)
            d_whole.append(dice(old.masks[old.best()], truth))
        item, size = ws.item(image_id), ws.segmenter.input_size
        assert all(item.model_view(Prompt(box=o.box()), pixels.shape[:2], ws.view_rule, size)
                   != whole_window(pixels.shape[:2]) for o in objects)
        t0 = time.perf_counter()
        ws.cfg.prefetch = True
        ws.predict(image_id, 0, None, objects[0].box().tolist(), [], multimask=True)  # starts the prefetch
        ws.clear(image_id)
        while ws.segmenter.prefetching:
            time.sleep(0.05)
        ws.segmenter.wait_idle()  # the last prefetched tile is done
        prefetch_s = time.perf_counter() - t0
        after_prefetch = []
        for obj in others:
            t0 = time.perf_counter()
            ws.predict(image_id, 0, None, obj.box().tolist(), [], multimask=True)
            after_prefetch.append(time.perf_counter() - t0)
            ws.clear(image_id)
        result = {"image": src.name, "objects": len(objects), "load_avg_1min": round(os.getloadavg()[0], 2),
                  "box_first_call": _ms(new_tile), "distinct_tiles": len(tiles), "box_embedded_tile": _ms(embedded_tile),
                  "prefetch_seconds": round(prefetch_s, 2), "box_first_call_after_prefetch": _ms(after_prefetch),
                  "box_whole_view": _ms(whole), "box_dice_tile": round(float(np.mean(d_tile)), 4),
                  "box_dice_whole_view": round(float(np.mean(d_whole)), 4),
                  "embedded_tile_over_whole_view": round(statistics.median(embedded_tile) / statistics.median(whole),
                                                         2)}
        ws.segmenter.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_json_atomic(Path(args.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
