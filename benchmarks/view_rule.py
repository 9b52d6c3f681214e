"""View rule x dataset: Dice and time of each way of choosing the window an object is prompted in.

Rules: ``legacy`` (the old auto tiling: 256 px native tiles for images over 512 px, objects larger than a
tile in a window hugging them), ``whole`` (``--tile 0``), ``object-T`` (the per-object rule of
``medsamkit.core.tiling`` with threshold T px at model scale). Every window any rule needs is embedded once
and every object decoded once per window (LiteMedSAM, box prompts by default), so a rule's Dice is the mean
over objects of the Dice in the window that rule gives the object, and its time is the measured encoder
seconds of the windows it uses plus the measured decoder seconds of its objects (same run, same conditions).
Datasets whose images all fit the model input get the whole image under every rule (checked from the
plans): their Dice is unchanged by construction and is not recomputed unless ``--compute-identical``.

Per-object rows go to OUT/<dataset>.jsonl as each image finishes (rerun to resume); the summary is printed
and written to benchmarks/results/view_rule.json.
Usage: MEDSAMKIT_THREADS=1 python benchmarks/view_rule.py [--datasets monuseg,glas,lung-gtv] [--out runs/view_rule]
(--smoke: one MoNuSeg image, 5 nuclei, two rules, in a temporary folder)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _shared import REPO, add_smoke, apply_smoke, require_shared, shared_dir
from medsamkit.core.objects import extract_objects
from medsamkit.core.runtime import setup
from medsamkit.core.seeds import name_key
from medsamkit.core.tiling import plan_tiles, tile_size_for
from medsamkit.io.datasets import open_dataset
from medsamkit.metrics import dice
from medsamkit.models import load_model
from medsamkit.predictor import Predictor
from medsamkit.prompts import parse_modes
from medsamkit.prompts.objects import run_mode_model

OVERLAP = 64  # evaluate's default --tile-overlap


def datasets(shared: Path | None) -> dict[str, dict]:
    """The measured datasets: spec, image limit and objects per image (MoNuSeg: the zero_shot.py subset)."""
    found = {"lung-gtv": {"data": "builtin:lung-gtv", "max_images": None, "max_objects": None}}
    if shared is not None:
        found["monuseg"] = {"data": str(shared / "data/monuseg/test"), "max_images": 3, "max_objects": 60}
        found["glas"] = {"data": str(shared / "data/glas/testA"), "max_images": None, "max_objects": None}
    return found


def rule_plan(rule: str, objs: list, shape: tuple[int, int], input_size: int) -> dict:
    """{window: objects} of one rule on one image."""
    if rule == "whole":
        return plan_tiles(objs, shape, 0, OVERLAP)
    if rule == "legacy":
        return plan_tiles(objs, shape, input_size if max(shape) > 2 * input_size else 0, OVERLAP)
    return plan_tiles(objs, shape, tile_size_for(shape, None, input_size, float(rule.split("-")[1])), OVERLAP)


def chosen_objects(case, spec: dict) -> list:
    """The objects evaluate would prompt (min area 20, --max-objects seeded as in the engine)."""
    objs = list(extract_objects(case.label, case.kind, 20))
    limit = spec["max_objects"]
    if limit is None or len(objs) <= limit:
        return objs
    idx = np.sort(np.random.default_rng([0, name_key(case.name)]).choice(len(objs), limit, replace=False))
    return [objs[i] for i in idx]


def measure_case(predictor: Predictor, case, spec: dict, rules: list[str], modes) -> dict:
    """Embed each window some rule needs once, decode its objects; per-object Dice and seconds per window."""
    objs = chosen_objects(case, spec)
    shape = case.label.shape[:2]
    size = predictor.model.preprocessing.input_size
    plans = {r: rule_plan(r, objs, shape, size) for r in rules}
    need: dict[tuple, dict[int, object]] = {}
    for plan in plans.values():
        for window, members in plan.items():
            need.setdefault(window, {}).update({o.label: o for o in members})
    views = {}
    for window, members in need.items():
        y0, x0, y1, x1 = window
        t0 = time.perf_counter()
        predictor.set_image(case.image[y0:y1, x0:x1], f"{case.name}{window}")
        embed_s = time.perf_counter() - t0
        objects = {}
        for mode in modes:
            runs = run_mode_model(predictor, list(members.values()), window, mode, 0, name_key(case.name))
            for r in runs:
                d = float(dice(r.masks[-1], r.obj.mask_in(window)))
                objects.setdefault(str(r.obj.label), {})[mode.name] = [round(d, 6), round(sum(r.seconds), 5)]
        views[":".join(map(str, window))] = {"embed_s": round(embed_s, 4), "objects": objects}
    return {"case": case.name, "shape": list(shape),
            "plans": {r: {":".join(map(str, w)): [o.label for o in m] for w, m in p.items()} for r, p in plans.items()},
            "views": views}


def summarise(records: list[dict], rules: list[str], modes) -> dict:
    """Per rule: Dice mean per mode, embedded windows, encoder + decoder seconds."""
    out = {}
    for rule in rules:
        dices = {m.name: [] for m in modes}
        embed_s = decode_s = 0.0
        windows = 0
        for rec in records:
            for w, labels in rec["plans"][rule].items():
                view = rec["views"][w]
                embed_s += view["embed_s"]
                windows += 1
                for lab in labels:
                    for m in modes:
                        d, s = view["objects"][str(lab)][m.name]
                        dices[m.name].append(d)
                        decode_s += s
        out[rule] = {"dice_mean": {k: round(float(np.mean(v)), 4) for k, v in dices.items()},
                     "objects": len(dices[modes[0].name]), "windows": windows,
                     "encoder_s": round(embed_s, 1), "decoder_s": round(decode_s, 1),
                     "seconds": round(embed_s + decode_s, 1)}
    return out


def plan_key(plan: dict) -> tuple:
    """A plan as a comparable value: sorted (window, object labels)."""
    return tuple(sorted((w, tuple(o.label for o in m)) for w, m in plan.items()))


def run_dataset(name: str, spec: dict, rules: list[str], modes, out: Path, predictor_of, compute_identical: bool):
    """Measure (or resume) one dataset; returns its summary."""
    ds = open_dataset(spec["data"])
    cases = list(ds.cases(spec["max_images"]))
    size = 256
    identical = all(len({plan_key(rule_plan(r, chosen_objects(c, spec), c.label.shape[:2], size))
                         for r in rules}) == 1 for c in cases)
    if identical and not compute_identical:
        return {"images": len(cases), "identical_plans": True,
                "note": "every rule gives every object the whole image: Dice unchanged by construction"}
    path = out / f"{name}.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    done = {r["case"] for r in records}
    for case in cases:
        if case.name in done:
            continue
        rec = measure_case(predictor_of(), case, spec, rules, modes)
        with path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        records.append(rec)
        print(f"{name} {case.name}: {len(rec['views'])} windows", flush=True)
    return {"images": len(records), "identical_plans": identical, "rules": summarise(records, rules, modes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--datasets", default="monuseg,glas,lung-gtv")
    ap.add_argument("--rules", default="legacy,whole,object-12,object-16,object-24,object-32")
    ap.add_argument("--skip-legacy", default="", help="datasets measured without the legacy rule (cost)")
    ap.add_argument("--prompts", default="box")
    ap.add_argument("--out", default="runs/view_rule")
    ap.add_argument("--compute-identical", action="store_true")
    ap.add_argument("--results", default=str(REPO / "benchmarks/results/view_rule.json"))
    ap.add_argument("--max-images", type=int, default=None, help="images per dataset (default: the dataset's own)")
    ap.add_argument("--max-objects", type=int, default=None, help="objects per image (default: the dataset's own)")
    add_smoke(ap)
    args = ap.parse_args()
    apply_smoke(args, ("out", "results"), datasets="monuseg", rules="whole,object-16", max_images=1, max_objects=5)
    setup()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    modes = parse_modes(args.prompts)
    holder: list[Predictor] = []

    def predictor_of() -> Predictor:
        if not holder:
            holder.append(Predictor(load_model("litemedsam", device="cpu")))
        return holder[0]

    found = datasets(shared_dir())
    results_path = Path(args.results)
    result = json.loads(results_path.read_text()) if results_path.exists() else {}
    result["method"] = __doc__.split("\n\n")[1].replace("\n", " ")
    result["prompts"] = args.prompts
    for name in args.datasets.split(","):
        if name not in found:
            require_shared(None, f"{name} (shared/data)")
        for key in ("max_images", "max_objects"):
            if getattr(args, key) is not None:
                found[name][key] = getattr(args, key)
        rules = [r for r in args.rules.split(",") if not (r == "legacy" and name in args.skip_legacy.split(","))]
        result.setdefault("datasets", {})[name] = {
            "data": found[name]["data"].replace(str(shared_dir()), "shared"),
            **{k: v for k, v in found[name].items() if k != "data"},
            **run_dataset(name, found[name], rules, modes, out, predictor_of, args.compute_identical)}
        results_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
