"""The demo: bundled LiteMedSAM on the builtin real datasets with box and box+5 prompts, in a few minutes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsamkit.core.figures import pyplot, save_figure
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate
from medsamkit.io.datasets import open_dataset
from medsamkit.io.images import to_uint8_rgb


@dataclass
class DemoConfig:
    """Where to write, and which builtin datasets / prompt modes to run."""

    out: str = "demo-out"
    datasets: tuple[str, ...] = ("builtin:lung-gtv", "builtin:dsb-nuclei")
    prompts: str = "box,box+5"
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    show_progress: bool = True


def _overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: Path, title: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(to_uint8_rgb(image))
    ax.contour(truth > 0, levels=[0.5], colors="lime", linewidths=0.8)
    if pred.any():
        ax.contour(pred > 0, levels=[0.5], colors="red", linewidths=0.8)
    ax.set_title(title + " (truth green, box prediction red)", fontsize=8)
    ax.axis("off")
    save_figure(fig, path, 110)


def run_demo(cfg: DemoConfig) -> dict:
    """Evaluate each builtin dataset, write overlays and a combined Markdown report; return the summaries."""
    from medsamkit.core.runtime import select_device
    from medsamkit.models import load_model
    from medsamkit.predictor import Predictor

    out = Path(cfg.out)
    predictor = Predictor(load_model(cfg.model, cfg.checkpoint, select_device(cfg.device)))
    results, sections = {}, [f"# medsamkit demo: {cfg.model}, zero-shot, box prompts", ""]
    for spec in cfg.datasets:
        sub = out / spec.replace("builtin:", "")
        t0 = time.perf_counter()
        ecfg = EvaluateConfig(data=spec, out=str(sub), prompts=cfg.prompts, model=cfg.model,
                              checkpoint=cfg.checkpoint, baseline=False, save_masks=True,
                              show_progress=cfg.show_progress)
        summary = evaluate(ecfg, predictor)
        summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
        results[spec] = summary
        # one overlay per image/volume: the slice or image with the most objects
        for case in open_dataset(spec).cases(max_items=1):
            mask_file = sub / "masks" / "box" / f"{case.name.replace('/', '__')}.png"
            if mask_file.exists():
                from medsamkit.io.images import read_label

                _overlay(case.image, case.label, read_label(mask_file), sub / "overlays" / f"{mask_file.stem}.png",
                         case.name)
            break
        md = (sub / "summary.md").read_text().split("\n", 1)[1]
        sections += [f"## {spec}", md.replace("](figures/", f"]({sub.name}/figures/"), ""]
    (out / "report.md").write_text("\n".join(sections))
    return results
