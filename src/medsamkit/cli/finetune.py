"""`medsamkit finetune`: fine-tune a model with simulated prompts (decoder, adapters or LoRA; class head)."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.interrupt import run_resumable
from medsamkit.cli.options import (
    build_config,
    cache_option,
    classes_option,
    max_images_option,
    model_options,
    prompts_option,
    tile_options,
    window_option,
)


@main.command()
@click.option("--data", "data", multiple=True, required=True,
              help="data SPEC or a `medsamkit annotate` --out folder; repeat to train on several data sets "
                   "(with --class-head: one class per set)")
@click.option("--out", required=True, type=click.Path(), help="run folder (rerun the same command to resume)")
@click.option("--mode", type=click.Choice(["decoder", "adapter", "lora"]), default="decoder", show_default=True,
              help="decoder: train prompt encoder + mask decoder on cached embeddings; adapter/lora: PEFT encoder")
@prompts_option("box,jitter+5,center,random1,iter3")
@click.option("--class-head", is_flag=True, help="add a class head (class label values, or one class per --data)")
@classes_option
@window_option
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="cosine: decay from --lr to --lr x --min-lr-ratio over all epochs (fixes --epochs for resuming)")
@click.option("--min-lr-ratio", type=float, default=0.01, show_default=True, help="cosine schedule's final lr / --lr")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True, help="objects per step (from one tile)")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="images held out, per --data set (whole patient volumes for 3D data)")
@click.option("--seed", type=int, default=0, show_default=True)
@cache_option
@max_images_option
@click.option("--max-objects", type=int, default=None, help="objects per training image and epoch (seeded)")
@click.option("--val-objects", type=int, default=32, show_default=True, help="objects per validation image")
@click.option("--max-steps", type=int, default=None, help="stop after N steps in total (resumable)")
@tile_options
@click.option("--bottleneck", "adapter_bottleneck", type=int, default=32, show_default=True,
              help="adapter bottleneck width")
@click.option("--lora-rank", type=int, default=4, show_default=True)
@click.option("--lora-alpha", type=float, default=8.0, show_default=True)
@click.option("--lora-targets", default="qkv", show_default=True, help="comma list among qkv, proj")
@click.option("--box-floor", is_flag=True,
              help="validate the starting weights too (epoch 0) and never pick an epoch whose validation box "
                   "Dice is below theirs as best.pt")
@click.option("--train-decoder", is_flag=True, help="adapter/lora: also train prompt encoder and mask decoder")
@model_options
def finetune(**params):
    """Fine-tune on DATA with simulated prompts; writes metrics.csv, curves.png, last.pt and best.pt in OUT.

    An annotation folder (`annotate --out`) trains on its committed, visible objects; the run loads back with
    `annotate --model OUT/best.pt`. Decoder mode reads and fills the embedding cache (--cache, default OUT/embeddings); give the --tile and
    --tile-overlap that `embed` used so its cached tiles are found.
    """
    from medsamkit.training import FinetuneConfig
    from medsamkit.training import finetune as run

    cfg = build_config(FinetuneConfig, params, data=list(params["data"]))
    summary = run_resumable(run, cfg, f"rerun the same command to resume from {cfg.out}/last.pt")
    click.echo(json.dumps(summary, indent=2, default=str))


@main.command("fit-clicks")
@click.option("--data", required=True, help="labelled data SPEC of the kind you will click on (a training split)")
@click.option("--out", required=True, type=click.Path(),
              help="run folder: ranking.json and per-image samples (rerun the same command to resume)")
@max_images_option
@click.option("--max-objects", type=int, default=40, show_default=True, help="objects per image (seeded, as evaluate)")
@tile_options
@window_option
@click.option("--folds", type=int, default=2, show_default=True, help="cross-validation folds, by image or volume")
@click.option("--coarse-to-fine", is_flag=True,
              help="serve the fitted ranking coarse to fine: ~1.5x faster clicks, not exactly what the "
                   "cross-validation scored (measured in the README)")
@click.option("--seed", type=int, default=0, show_default=True)
@model_options
def fit_clicks(**params):
    """Fit the click search's ranking to DATA (no model training); writes OUT/ranking.json for --click-ranker.

    Cross-validation by image (by patient volume for slices) compares the fitted ranking's answers with the
    default search's; ranking.json keeps the fitted one only where it wins there.
    """
    from medsamkit.evaluation.click_ranking import ClickRankingConfig, fit_click_ranking

    cfg = build_config(ClickRankingConfig, params)
    result = run_resumable(fit_click_ranking, cfg, f"rerun the same command to reuse the samples in {cfg.out}")
    shown = ("chosen", "images", "sources", "prompts", "cross_validation")
    click.echo(json.dumps({k: result[k] for k in shown}, indent=2))
