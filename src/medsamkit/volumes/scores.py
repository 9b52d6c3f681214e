"""Volumetric scores of predicted label maps: per-volume Dice / NSD / HD95 (mm), per-slice Dice, summaries.

Every slice counts: a prediction on a slice without truth is a false positive of the volume.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.io.datasets import VolumeCase
from medsamkit.metrics import HD95_CONVENTION, MetricAccumulator, dice, hd95, nsd

SLICE_FIELDS = ["volume", "variant", "class", "z", "truth_px", "pred_px", "dice"]


def volume_fields(tolerances_mm: Sequence[float] = (1.0, 2.0)) -> list[str]:
    """Columns of per_volume.csv: one NSD column per tolerance."""
    return ["volume", "variant", "mode", "strategy", "three_slice", "class", "dice",
            *(f"nsd_{t:g}mm" for t in tolerances_mm), "hd95_mm", "truth_voxels", "pred_voxels", "truth_slices",
            "pred_slices", "fp_slices", "embedded_slices", "seconds"]


VOLUME_FIELDS = volume_fields()


def present_classes(label: np.ndarray, classes: Iterable[int] | None) -> list[int]:
    """The non-zero values of ``label``, ascending; only those in ``classes`` when it is given."""
    values = [int(v) for v in np.unique(label) if v != 0]
    if classes is None:
        return values
    wanted = sorted({int(c) for c in classes})
    return [v for v in wanted if v in values]


def volume_scores(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
                  tolerances_mm: Sequence[float] = (1.0, 2.0)) -> dict[str, float | int]:
    """Dice, NSD at each tolerance, HD95 (mm) of one class over the whole volume, plus voxel/slice counts.

    Every slice counts: a prediction on a slice without truth adds false positives (``fp_slices``).
    """
    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    if p.shape != t.shape:
        raise InputError(f"prediction shape {p.shape} does not match truth shape {t.shape}")
    p_slices, t_slices = p.reshape(len(p), -1).any(1), t.reshape(len(t), -1).any(1)
    row: dict[str, float | int] = {"dice": dice(p, t)}
    for tol in tolerances_mm:
        row[f"nsd_{tol:g}mm"] = nsd(p, t, tol, spacing)
    row["hd95_mm"] = hd95(p, t, spacing)
    row.update(truth_voxels=int(t.sum()), pred_voxels=int(p.sum()), truth_slices=int(t_slices.sum()),
               pred_slices=int(p_slices.sum()), fp_slices=int((p_slices & ~t_slices).sum()))
    return row


def slice_rows(pred: np.ndarray, truth: np.ndarray) -> list[dict[str, float | int]]:
    """Per-slice Dice of one class on every slice where truth or prediction is non-empty."""
    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    rows = []
    for z in np.flatnonzero((p | t).reshape(len(p), -1).any(1)):
        rows.append({"z": int(z), "truth_px": int(t[z].sum()), "pred_px": int(p[z].sum()),
                     "dice": dice(p[z], t[z])})
    return rows


def score_case(case: VolumeCase, pred: np.ndarray, tolerances_mm: Sequence[float] = (1.0, 2.0),
               variant: str = "predictions", classes: Iterable[int] | None = None,
               ) -> tuple[list[dict], list[dict]]:
    """Per-volume and per-slice rows of a label map against the case's label, class by class
    (only ``classes`` when given)."""
    if pred.shape != case.label.shape:
        raise InputError(f"{case.name}: prediction shape {pred.shape} does not match label shape "
                         f"{case.label.shape}")
    volume_rows, per_slice = [], []
    for v in present_classes(case.label, classes):
        base = {"volume": case.name, "variant": variant, "class": v}
        row = volume_scores(pred == v, case.label == v, case.spacing, tolerances_mm)
        volume_rows.append({**base, "mode": "", "strategy": "given", "three_slice": 0, **row,
                            "embedded_slices": 0, "seconds": 0})
        per_slice.extend({**base, **r} for r in slice_rows(pred == v, case.label == v))
    return volume_rows, per_slice


def summarise(rows: list[dict], tolerances_mm: Sequence[float] = (1.0, 2.0)) -> dict:
    """Per variant and class: mean / median of per-volume Dice, NSD and HD95 over volumes."""
    metrics = ["dice", *(f"nsd_{t:g}mm" for t in tolerances_mm), "hd95_mm"]
    groups: dict[tuple[str, str], dict[str, MetricAccumulator]] = {}
    for row in rows:
        acc = groups.setdefault((row["variant"], str(row["class"])), {m: MetricAccumulator() for m in metrics})
        for m in metrics:
            acc[m].add(float(row[m]))
    return {
        f"{variant}|class {cls}": {m: a.summary() for m, a in acc.items()}
        for (variant, cls), acc in sorted(groups.items())
    }


def summary_markdown(summary: dict, title: str) -> str:
    """The summary table (variant x class, mean (median) of each metric) as Markdown."""
    keys = next(iter(summary.values())).keys() if summary else []
    lines = [f"# {title}", "", "Per-volume metrics (whole volume, empty slices included), mean (median) over "
             "volumes. NSD: boundary-voxel convention (MONAI's default; not the challenges' surfel-weighted one). "
             f"HD95: {HD95_CONVENTION}, mm.", "", "| variant | class | n | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for name, stats in summary.items():
        variant, cls = name.split("|")
        n = next(iter(stats.values()))["n"]
        cells = [f"{s['mean']:.3f} ({s['median']:.3f})" for s in stats.values()]
        lines.append(f"| {variant} | {cls.split()[-1]} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
