"""Evaluation reports from the per-object CSV: summary table (JSON + Markdown), click curve, percentile examples."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from medsamkit.core.figures import pyplot, save_figure
from medsamkit.core.results import read_rows
from medsamkit.prompts import PromptMode


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "median": None, "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(arr.mean()), 4), "median": round(float(np.median(arr)), 4), "n": int(arr.size)}


def _method_time(seconds: float, prompts: int) -> dict:
    return {"seconds": round(seconds, 2), "prompts": prompts,
            "prompts_per_s": round(prompts / seconds, 2) if seconds > 0 else None}


def summarise(rows: list[dict], image_rows: list[dict], modes: list[PromptMode]) -> dict:
    """Per (method, mode): Dice/IoU mean/median/n on final steps, prompts/s; curves for interactive modes."""
    final = defaultdict(list)
    seconds = defaultdict(float)
    calls = defaultdict(int)
    curves: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        key = (r["method"], r["mode"])
        s = float(r["seconds"])
        if s > 0:
            seconds[key] += s
            calls[key] += 1
        if r["final"] == "1":
            final[key].append((float(r["dice"]), float(r["iou"])))
        curves[r["method"]][r["mode"]][int(r["step"])].append(float(r["iou"]))
    n_images = len(image_rows)
    embed = sum(float(r["embed_seconds"]) for r in image_rows)
    decode = sum(float(r["decode_seconds"]) for r in image_rows)
    table = []
    for method in ("model", "random_walker"):
        for m in modes:
            key = (method, m.name)
            if key not in final:
                continue
            d = [x[0] for x in final[key]]
            i = [x[1] for x in final[key]]
            table.append({
                "method": method, "mode": m.name, "dice": _stats(d), "iou": _stats(i),
                "prompts_per_s": round(calls[key] / seconds[key], 2) if seconds[key] else None,
            })
    prompts = {method: sum(n for (m, _), n in calls.items() if m == method) for method in ("model", "random_walker")}
    base = sum(float(r.get("baseline_seconds") or 0) for r in image_rows)
    methods = {"model": _method_time(embed + decode, prompts["model"]) | {
        "encoder_seconds": round(embed, 2), "decoder_seconds": round(decode, 2)}}
    if prompts["random_walker"]:
        methods["random_walker"] = _method_time(base, prompts["random_walker"])
    curve_out = {
        method: {mode: {str(k): round(float(np.mean(v)), 4) for k, v in sorted(steps.items())}
                 for mode, steps in per_mode.items() if len(steps) > 1}
        for method, per_mode in curves.items()
    }
    return {
        "images": n_images,
        "objects": sum(int(r["objects"]) for r in image_rows),
        "skipped_small": sum(int(r["skipped_small"]) for r in image_rows),
        "tiles": sum(int(r["tiles"]) for r in image_rows),
        "embed_seconds": round(embed, 2),
        "decode_seconds": round(decode, 2),
        "images_per_s": round(n_images / (embed + decode), 4) if embed + decode > 0 else None,
        "methods": methods,
        "table": table,
        "click_curves": {k: v for k, v in curve_out.items() if v},
        "note": "Dice/IoU per object on its final prompt step; both-empty cases cannot occur (objects are "
                "non-empty); images/s counts encoder + decoder time of the model only; time per method: the "
                "model's encoder + decoder seconds, the random walker's seconds (prompts/s over all modes).",
    }


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def markdown(summary: dict, title: str) -> str:
    """The summary as a Markdown report."""
    lines = [f"# {title}", "",
             f"images: {summary['images']}, objects: {summary['objects']} (skipped as too small: "
             f"{summary['skipped_small']}), tiles: {summary['tiles']}, images/s: {_fmt(summary['images_per_s'])}",
             "time: " + ", ".join(f"{name} {t['seconds']} s ({_fmt(t['prompts_per_s'])} prompts/s)"
                                  for name, t in summary.get("methods", {}).items()),
             "", "| method | prompt | Dice mean | Dice median | IoU mean | IoU median | n | prompts/s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary["table"]:
        d, i = row["dice"], row["iou"]
        lines.append(f"| {row['method']} | {row['mode']} | {_fmt(d['mean'])} | {_fmt(d['median'])} | "
                     f"{_fmt(i['mean'])} | {_fmt(i['median'])} | {d['n']} | {_fmt(row['prompts_per_s'])} |")
    for method, per_mode in summary.get("click_curves", {}).items():
        for mode, curve in per_mode.items():
            lines += ["", f"IoU by number of prompt steps, {method} {mode}: "
                      + ", ".join(f"{k}: {v:.3f}" for k, v in curve.items())]
    lines += ["", summary["note"], ""]
    return "\n".join(lines)


def plot_curves(summary: dict, path: Path) -> Path | None:
    """IoU against the number of clicks for every interactive mode (model and baseline)."""
    curves = summary.get("click_curves", {})
    if not curves:
        return None
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, per_mode in curves.items():
        for mode, curve in per_mode.items():
            ks = [int(k) for k in curve]
            ax.plot(ks, list(curve.values()), marker="o", label=f"{method} {mode}",
                    linestyle="-" if method == "model" else "--")
    ax.set_xlabel("prompt steps (clicks)")
    ax.set_ylabel("mean IoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, 120)


def percentile_rows(rows: list[dict], mode: str, method: str = "model") -> list[tuple[int, dict]]:
    """The final-step rows at the 25th/50th/75th percentile of Dice for one mode."""
    sel = sorted((r for r in rows if r["mode"] == mode and r["method"] == method and r["final"] == "1"),
                 key=lambda r: float(r["dice"]))
    if not sel:
        return []
    return [(q, sel[min(int(math.floor(q / 100 * len(sel))), len(sel) - 1)]) for q in (25, 50, 75)]


def _crop(obj_mask: np.ndarray, pad_extra: int = 12) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(obj_mask)
    size = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    pad = size // 2 + pad_extra
    h, w = obj_mask.shape
    return (max(rows.min() - pad, 0), min(rows.max() + 1 + pad, h), max(cols.min() - pad, 0),
            min(cols.max() + 1 + pad, w))


def _draw_example(ax, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, prompt: dict) -> None:
    from medsamkit.io.images import to_uint8_rgb

    plt = pyplot()

    r0, r1, c0, c1 = _crop(truth)
    ax.imshow(to_uint8_rgb(image)[r0:r1, c0:c1])
    ax.contour(truth[r0:r1, c0:c1], levels=[0.5], colors="lime", linewidths=1)
    if pred[r0:r1, c0:c1].any():
        ax.contour(pred[r0:r1, c0:c1], levels=[0.5], colors="red", linewidths=1)
    if prompt.get("box") is not None:
        bx0, by0, bx1, by1 = np.asarray(prompt["box"]) - np.array([c0, r0, c0, r0])
        ax.add_patch(plt.Rectangle((bx0, by0), bx1 - bx0, by1 - by0, fill=False, color="yellow", lw=1))
    for (px, py), lab in zip(prompt.get("points", []), prompt.get("labels", [])):
        ax.plot(px - c0, py - r0, marker="*", color="yellow" if lab == 1 else "cyan", ms=9)
    ax.set_xlim(-0.5, c1 - c0 - 0.5)
    ax.set_ylim(r1 - r0 - 0.5, -0.5)


def plot_examples(cfg, modes: list[PromptMode], rows: list[dict], mask_file, path: Path) -> Path | None:
    """Per mode, the 25/50/75th-percentile objects: image crop, truth (green), prediction (red), prompts.

    Reads the saved final label maps (``mask_file(mode, case)``) and each row's final prompt: no model runs.
    """
    plt = pyplot()

    from medsamkit.io.datasets import open_dataset
    from medsamkit.io.images import read_label

    wanted = {m.name: percentile_rows(rows, m.name) for m in modes}
    need = {r["image"] for picks in wanted.values() for _, r in picks}
    if not need:
        return None
    cases = {}
    for case in open_dataset(cfg.data, window=cfg.window).cases(cfg.max_images):
        if case.name in need:
            cases[case.name] = case
        if len(cases) == len(need):
            break
    fig, axes = plt.subplots(len(modes), 3, figsize=(9, 3 * len(modes)), squeeze=False)
    for mi, mode in enumerate(modes):
        for qi, (q, row) in enumerate(wanted[mode.name]):
            ax = axes[mi][qi]
            ax.axis("off")
            case, file = cases.get(row["image"]), mask_file(mode.name, row["image"])
            if case is None or not Path(file).exists() or not row.get("prompt"):
                continue
            y0, x0, y1, x1 = (int(v) for v in row["tile"].split(":"))
            label = int(row["object"])
            truth = case.label[y0:y1, x0:x1] == label
            pred = read_label(file)[y0:y1, x0:x1] == label
            _draw_example(ax, case.image[y0:y1, x0:x1], truth, pred, json.loads(row["prompt"]))
            ax.set_title(f"{mode.name} p{q}: Dice {float(row['dice']):.2f}", fontsize=8)
    fig.suptitle("truth green, prediction red, prompts yellow (negative clicks cyan)", fontsize=9)
    return save_figure(fig, path, 110)


def write_reports(out: Path, modes: list[PromptMode], cfg, mask_file=None) -> dict:
    """Summary JSON/Markdown from the CSVs in `out`, and (cfg.figures) the figures from rows and saved masks."""
    # sorted, so the summary of a run does not depend on the order its cases finished (distributed runs)
    rows = sorted(read_rows(out / "per_object.csv"), key=lambda r: (r["image"], r["method"], r["mode"], int(r["object"]), int(r["step"])))
    image_rows = read_rows(out / "per_image.csv")
    summary = summarise(rows, image_rows, modes)
    summary["data"], summary["model"], summary["seed"] = cfg.data, cfg.model, cfg.seed
    used = sorted({r["clicks"] for r in rows if r.get("clicks")})
    summary["clicks"] = {"requested": cfg.clicks, "used": used,  # the click strategy (prompts.clicks)
                         "ranking": cfg.click_ranker or "default"}
    summary["box_output"] = cfg.box_output  # which output answered a box alone (prompts.boxes)
    figs = []
    if cfg.figures and plot_curves(summary, out / "figures" / "click_curve.png"):
        figs.append("figures/click_curve.png")
    if cfg.figures and mask_file is not None and rows:
        if plot_examples(cfg, modes, rows, mask_file, out / "figures" / "percentile_examples.png"):
            figs.append("figures/percentile_examples.png")
    summary["figures"] = figs
    md = markdown(summary, f"Evaluation: {cfg.model} on {cfg.data}")
    md += "".join(f"\n![{f}]({f})\n" for f in figs)
    (out / "summary.md").write_text(md)
    return summary
