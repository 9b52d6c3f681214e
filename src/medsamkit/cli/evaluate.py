"""`medsamkit evaluate`: simulated-prompt evaluation of a model over a labelled dataset."""

from __future__ import annotations

import click

from medsamkit.cli.group import main
from medsamkit.cli.interrupt import print_report, run_batch
from medsamkit.cli.options import (
    box_output_option,
    build_config,
    cache_option,
    classes_option,
    click_ranker_option,
    clicks_option,
    dask_options,
    max_images_option,
    model_options,
    multimask_option,
    prompts_option,
    save_masks_option,
    tile_options,
    window_option,
)


@main.command()
@click.option("--data", required=True, help="data SPEC: folder with images/+labels/, volume, or builtin:NAME")
@prompts_option("box,box+5,center,random3,iter5")
@click.option("--out", required=True, type=click.Path(), help="results folder (rerun to resume)")
@max_images_option
@click.option("--max-objects", type=int, default=None, help="at most N objects per image (seeded choice)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--min-area", type=int, default=20, show_default=True, help="skip (and count) smaller objects")
@tile_options
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="also run the random-walker baseline with the same prompts")
@save_masks_option
@multimask_option
@clicks_option
@click_ranker_option
@box_output_option
@cache_option
@classes_option
@window_option
@click.option("--figures/--no-figures", default=True, show_default=True,
              help="IoU-vs-clicks curve and percentile examples under OUT/figures")
@model_options
@dask_options
def evaluate(**params):
    """Evaluate a model with simulated prompts; writes per_object.csv, summary.json/.md and figures/."""
    from medsamkit.evaluation.config import EvaluateConfig
    from medsamkit.evaluation.run import evaluate as run

    cfg = build_config(EvaluateConfig, params)
    summary = run_batch(run, cfg, params, f"finished images are kept in {cfg.out}; rerun the same command to resume")
    print_report(cfg.out, f"{summary['images']} images; results in {cfg.out}", summary)
