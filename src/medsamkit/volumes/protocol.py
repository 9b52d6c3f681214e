"""`evaluate-volume --protocol cvpr25`: the CVPR 2025 interactive 3D challenge's protocol, as its organisers'
evaluation script applies it (docs/protocols.md "Interactive 3D").

Per class of each volume: the 3D box of the truth (its z-range and its 2D box on the middle slice,
``engine.Box3D.of_truth``) answered by the engine (``volumes.engine``), then 5 clicks, each at the voxel of
largest distance transform inside the largest 26-connected error component (on a crop padded by 25% per axis;
ties broken at random with a fixed seed), positive where the truth is foreground, each followed by the engine's
updated 3D answer. After each of the 6 answers: Dice, NSD at 2 mm (surfel-area weighted, counted only where
that step's Dice > 0.2, else 0), HD95 (boundary voxels) and seconds. Per class: DSC AUC and NSD AUC by the
trapezoid rule over the 5 click steps (x spacing 1, so each lies in [0, 4]) and the final Dice / NSD.
Results go through the one results store, volume by volume (resumable), run by the one batch driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsamkit.core.atomic import write_json_atomic, write_text_atomic
from medsamkit.core.batch import Task
from medsamkit.core.errors import InputError
from medsamkit.core.figures import pyplot, save_figure
from medsamkit.core.results import RunStore, key_differences
from medsamkit.core.seeds import name_key, object_rng
from medsamkit.embedding.resources import Resources
from medsamkit.io.datasets import VolumeCase
from medsamkit.metrics import HD95_CONVENTION, dice, hd95, surface_dice
from medsamkit.models.loading import run_identity
from medsamkit.predictor import Predictor
from medsamkit.prompts.search_settings import ranking_identity, search_settings
from medsamkit.volumes.config import (
    VOLUME_RESULT_KEYS,
    EvaluateVolumeConfig,
    local_volume_resources,
    volume_kind,
)
from medsamkit.volumes.engine import Box3D, EngineSettings, VolumeEngine
from medsamkit.volumes.scores import present_classes
from medsamkit.volumes.segment import parse_class_list
from medsamkit.volumes.slices import SliceEmbedder

PROTOCOLS = ("cvpr25",)
STARTS = ("box", "clicks")  # the challenge's cases start from a 3D box, some from clicks only
CLICKS = 5
NSD_TOLERANCE_MM = 2.0
MIN_DICE_FOR_NSD = 0.2
NSD_NAME = "NSD at 2 mm, surfel-area weighted (DeepMind / the challenge), 0 where Dice <= 0.2"
STEP_FIELDS = ["volume", "class", "step", "click_z", "click_y", "click_x", "click_label", "dice", "nsd_2mm",
               "hd95_mm", "pred_voxels", "truth_voxels", "encoded_slices", "seconds"]
CLASS_FIELDS = ["volume", "class", "dsc_auc", "nsd_auc", "final_dsc", "final_nsd", "box_dice", "box_nsd",
                "seconds_total"]
PROTOCOL_KEYS = (*VOLUME_RESULT_KEYS, "clicks", "start", "click_ranker_sha256")


def challenge_click(pred: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, bool] | None:
    """The challenge's next click (z, y, x, positive): the voxel of largest distance transform inside the largest
    26-connected component of ``pred != truth`` (crop padded by 25% per axis, at least 1 voxel, the volume's edge
    counting as background; ties at random); None: no error."""
    error = np.asarray(pred, dtype=bool) != np.asarray(truth, dtype=bool)
    if not error.any():
        return None
    labels, n = ndimage.label(error, structure=np.ones((3,) * error.ndim, dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    component = labels == int(np.argmax(sizes)) + 1
    box = ndimage.find_objects(component.astype(np.uint8))[0]
    pads = [max(int(np.ceil((s.stop - s.start) / 4)), 1) for s in box]
    crop = tuple(slice(max(s.start - p, 0), min(s.stop + p, dim)) for s, p, dim in zip(box, pads, error.shape))
    # one voxel of background around the crop: the volume's edge bounds the component like background does
    distance = ndimage.distance_transform_edt(np.pad(component[crop], 1))[(slice(1, -1),) * error.ndim]
    peaks = np.argwhere(distance == distance.max())
    pick = peaks[int(rng.integers(len(peaks)))] + np.array([s.start for s in crop])
    z, y, x = (int(v) for v in pick)
    return z, y, x, bool(truth[z, y, x])


def click_auc(values: list[float]) -> float:
    """Area under a metric over the click steps by the trapezoid rule, x spacing 1 (5 steps: in [0, 4])."""
    v = np.asarray(values, dtype=float)
    return float(((v[1:] + v[:-1]) / 2).sum()) if len(v) > 1 else 0.0


def step_scores(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> dict:
    """Dice, the challenge's NSD (2 mm, surfel, only where Dice > 0.2) and HD95 of one answer."""
    d = dice(pred, truth)
    n = surface_dice(pred, truth, NSD_TOLERANCE_MM, spacing, convention="surfel") if d > MIN_DICE_FOR_NSD else 0.0
    return {"dice": round(d, 6), "nsd_2mm": round(n, 6), "hd95_mm": round(hd95(pred, truth, spacing), 4),
            "pred_voxels": int(pred.sum()), "truth_voxels": int(truth.sum())}


def run_class(engine: VolumeEngine, truth: np.ndarray, spacing: tuple[float, ...], rng: np.random.Generator,
              clicks: int = CLICKS, start: str = "box") -> list[dict]:
    """The protocol's rows of one class (step 0: the 3D box, then one per click). ``start="clicks"``: no box;
    step 0 is the empty answer (Dice and NSD 0, as the challenge counts such cases; no HD95) and the first
    click starts the object."""
    rows, embedder = [], engine.embedder
    click: tuple[int, int, int, bool] | None = None
    for step in range(clicks + 1):
        before, t0 = len(embedder.encoded), time.perf_counter()
        if step == 0:
            pred = engine.start(Box3D.of_truth(truth)) if start == "box" else engine.mask
        else:
            click = challenge_click(engine.mask, truth, rng)
            pred = engine.mask if click is None else engine.click(*click)
        seconds = time.perf_counter() - t0
        where = {"click_z": "", "click_y": "", "click_x": "", "click_label": ""}
        if step and click is not None:
            where = dict(zip(("click_z", "click_y", "click_x"), click[:3]), click_label=int(click[3]))
        scores = step_scores(pred, truth, spacing)
        if step == 0 and start != "box":
            scores["hd95_mm"] = ""  # nothing answered yet
        rows.append({"step": step, **where, **scores, "encoded_slices": len(embedder.encoded) - before,
                     "seconds": round(seconds, 3)})
    return rows


def class_row(steps: list[dict]) -> dict:
    """DSC AUC / NSD AUC over the click steps, finals, the box step and total seconds of one class's rows."""
    clicked = [r for r in steps if int(r["step"]) > 0]
    dsc, nsd = [float(r["dice"]) for r in clicked], [float(r["nsd_2mm"]) for r in clicked]
    return {"dsc_auc": round(click_auc(dsc), 6), "nsd_auc": round(click_auc(nsd), 6), "final_dsc": dsc[-1],
            "final_nsd": nsd[-1], "box_dice": float(steps[0]["dice"]), "box_nsd": float(steps[0]["nsd_2mm"]),
            "seconds_total": round(sum(float(r["seconds"]) for r in steps), 3)}


def protocol_case(predictor: Predictor, case: VolumeCase, cfg: EvaluateVolumeConfig, cache=None) -> dict:
    """Rows of every chosen class of one volume: {"steps": [...], "classes": [...]}."""
    embedder = SliceEmbedder(predictor, case.image, False, case.name, cache=cache)
    settings = EngineSettings(min_iou=cfg.min_iou, clicks=cfg.clicks, search=search_settings(cfg.click_ranker))  # --min-area: slice-wise
    steps, classes = [], []
    for v in present_classes(case.label, parse_class_list(cfg.classes)):
        truth = case.label == v
        rows = run_class(VolumeEngine(embedder, settings), truth, case.spacing,
                         object_rng(cfg.seed, name_key(case.name), v), start=cfg.start)
        steps.extend({"volume": case.name, "class": v, **r} for r in rows)
        classes.append({"volume": case.name, "class": v, **class_row(rows)})
    return {"steps": steps, "classes": classes}


def protocol_item(res: Resources, cfg: EvaluateVolumeConfig, index: int, done: frozenset[str]) -> Iterator[dict]:
    """Task: the protocol's rows of volume ``index`` (``rows`` None when the folder already has them)."""
    case = res.item(cfg.data, cfg.window, volume_kind(cfg.data), index)
    if not isinstance(case, VolumeCase):
        raise InputError(f"{cfg.data}: evaluate-volume needs volumes; use `evaluate` for 2D images")
    if case.name in done:
        yield {"name": case.name, "rows": None}
        return
    predictor = res.predictor(cfg.model, cfg.checkpoint, cfg.device)
    yield {"name": case.name, "rows": protocol_case(predictor, case, cfg, res.cache(cfg.cache, predictor))}


class ProtocolRun:
    """One protocol folder as a batch job (``core.batch.BatchJob``): steps.csv, classes.csv, a summary."""

    desc, unit = "volumes", "volume"

    def __init__(self, cfg: EvaluateVolumeConfig, predictor: Predictor | None = None,
                 on_volume: Callable[[str], None] | None = None) -> None:
        if cfg.protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol {cfg.protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        if cfg.start not in STARTS:
            raise InputError(f"unknown start {cfg.start!r}; choose one of: {', '.join(STARTS)}")
        if cfg.predictions or cfg.three_slice is True or cfg.propagate is True:
            raise InputError("--protocol runs the model interactively; it takes no --predictions, --propagate or "
                             "--three-slice")
        self.cfg, self.on_volume, self.show_progress = cfg, on_volume, cfg.show_progress
        search_settings(cfg.click_ranker)  # a bad ranking file is refused before any volume is run
        self.store = RunStore(cfg.out, {**run_identity(cfg), **ranking_identity(cfg.click_ranker)},
                              {"steps": STEP_FIELDS, "classes": CLASS_FIELDS},
                              differences=key_differences(PROTOCOL_KEYS, {"start": "box"}), case_field="volume")
        self.resources, self.n_volumes = local_volume_resources(cfg.data, cfg.window, cfg.max_images, predictor)
        self.n_new = 0

    def tasks(self, slots: int | None) -> list[Task]:  # noqa: D102
        done = frozenset(self.store.done)
        return [Task(protocol_item, (self.cfg, i, done)) for i in range(self.n_volumes)]

    def take(self, result: dict) -> None:  # noqa: D102
        if result["rows"] is None:
            return
        self.store.add_case(result["name"], result["rows"])
        self.n_new += 1
        if self.on_volume is not None:
            self.on_volume(result["name"])

    def has_results(self) -> bool:  # noqa: D102
        return bool(self.store.done)

    def finish(self, interrupted: bool) -> dict:
        """summary.json / summary.md / dice_nsd_by_step.png of every row the folder holds."""
        out = Path(self.cfg.out)
        steps, classes = self.store.rows("steps"), self.store.rows("classes")
        summary = {"config": asdict(self.cfg), "protocol": self.cfg.protocol, "nsd": NSD_NAME, "hd95": HD95_CONVENTION,
                   "volumes": len({r["volume"] for r in classes}), **summarise_protocol(steps, classes),
                   "interrupted": interrupted, "new_volumes": self.n_new}
        write_json_atomic(out / "summary.json", summary)
        write_text_atomic(out / "summary.md", protocol_markdown(summary, f"CVPR 2025 interactive protocol: "
                                                                         f"{self.cfg.data}"))
        if steps:
            plot_steps(summary, out / "dice_nsd_by_step.png")
        return summary


def _mean(values: list) -> float:
    """Mean of the values that were scored ("" marks a step without an answer to score)."""
    values = [float(v) for v in values if v != ""]
    return round(float(np.mean(values)), 4) if values else float("nan")


def summarise_protocol(steps: list[dict], classes: list[dict]) -> dict:
    """Per class value: mean Dice / NSD / HD95 / seconds by step, mean AUCs and finals over volumes."""
    out: dict[str, dict] = {}
    for cls in sorted({r["class"] for r in classes}, key=int):
        rows = [r for r in steps if r["class"] == cls]
        per_step = []
        for k in sorted({int(r["step"]) for r in rows}):
            at = [r for r in rows if int(r["step"]) == k]
            per_step.append({"step": k, "dice": _mean([float(r["dice"]) for r in at]),
                             "nsd_2mm": _mean([float(r["nsd_2mm"]) for r in at]),
                             "hd95_mm": _mean([r["hd95_mm"] for r in at]),
                             "seconds": _mean([float(r["seconds"]) for r in at]), "n": len(at)})
        mine = [r for r in classes if r["class"] == cls]
        totals = {k: _mean([float(r[k]) for r in mine]) for k in CLASS_FIELDS[2:]}
        out[f"class {cls}"] = {"steps": per_step, **totals, "max_seconds_total": max(float(r["seconds_total"])
                                                                                   for r in mine), "n": len(mine)}
    return {"classes": out}


def protocol_markdown(summary: dict, title: str) -> str:
    """The summary as Markdown: one table by step, one of AUCs and finals, per class value."""
    lines = [f"# {title}", "", f"NSD: {summary['nsd']}. HD95: {summary['hd95']}, mm. Means over volumes.", ""]
    for name, c in summary["classes"].items():
        lines += [f"## {name} ({c['n']} volumes)", "", "| step | Dice | NSD (surfel, 2 mm) | HD95 (mm) | seconds |",
                  "|---|---|---|---|---|"]
        first = "3D box" if summary.get("config", {}).get("start", "box") == "box" else "no box"
        for s in c["steps"]:
            label = first if s["step"] == 0 else f"click {s['step']}"
            lines.append(f"| {label} | {s['dice']:.3f} | {s['nsd_2mm']:.3f} | {s['hd95_mm']:.2f} | {s['seconds']:.1f} |")
        lines += ["", "| DSC AUC | NSD AUC | final DSC | final NSD | seconds per class (mean, max) |",
                  "|---|---|---|---|---|",
                  f"| {c['dsc_auc']:.3f} | {c['nsd_auc']:.3f} | {c['final_dsc']:.3f} | {c['final_nsd']:.3f} | "
                  f"{c['seconds_total']:.1f}, {c['max_seconds_total']:.1f} |", ""]
    return "\n".join(lines)


def plot_steps(summary: dict, path: Path) -> Path:
    """Mean Dice and NSD against the protocol step (0: the 3D box), one line pair per class value."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, c in summary["classes"].items():
        ks = [s["step"] for s in c["steps"]]
        ax.plot(ks, [s["dice"] for s in c["steps"]], marker="o", label=f"Dice, {name}")
        ax.plot(ks, [s["nsd_2mm"] for s in c["steps"]], marker="s", linestyle="--", label=f"NSD 2 mm (surfel), {name}")
    ax.set_xlabel("step (0: 3D box, then clicks)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, 120)
