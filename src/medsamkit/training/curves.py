"""The training curves figure of a run: train loss and validation Dice per prompt mode against the epoch."""

from __future__ import annotations

import math
from pathlib import Path

from medsamkit.core.figures import pyplot, save_figure
from medsamkit.core.results import read_rows


def write_curves(metrics_csv: Path, out_png: Path) -> None:
    """Draw RUN/metrics.csv into ``out_png`` (nothing when the table holds no epoch yet)."""
    plt = pyplot()

    rows = read_rows(metrics_csv)
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    # epoch 0 (box_floor's validation of the starting weights) has no training loss
    ax1.plot(epochs, [float(r["train_loss"]) if r["train_loss"] != "" else math.nan for r in rows], marker="o")
    ax1.set(xlabel="epoch", ylabel="train loss", title="training loss")
    for key in rows[0]:
        if key.startswith("val_dice_") or key == "val_class_accuracy":
            vals = [float(r[key]) if r[key] not in ("", "nan") else math.nan for r in rows]
            ax2.plot(epochs, vals, marker="o", label=key.removeprefix("val_dice_"))
    ax2.set(xlabel="epoch", ylabel="validation Dice", title="validation", ylim=(0, 1))
    if ax2.lines:
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no validation images", ha="center", transform=ax2.transAxes)
    save_figure(fig, out_png, 100)
