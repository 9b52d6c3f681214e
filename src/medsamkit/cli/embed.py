"""`medsamkit embed`: precompute image embeddings into a cache folder (reused by evaluate and finetune)."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.interrupt import report_failures, run_batch
from medsamkit.cli.options import (
    build_config,
    dask_options,
    max_images_option,
    model_options,
    tile_options,
    window_option,
)


@main.command()
@click.option("--data", required=True, help="data SPEC: folder with images/+labels/, volume, or builtin:NAME")
@click.option("--out", required=True, type=click.Path(), help="cache folder (rerun to complete it)")
@max_images_option
@tile_options
@window_option
@click.option("--min-area", type=int, default=20, show_default=True,
              help="objects smaller than this do not get a tile of their own")
@model_options
@dask_options
def embed(**params):
    """Embed every image (tiles of large images) of DATA into OUT; writes OUT/index.json."""
    from medsamkit.embedding.precompute import EmbedConfig, embed_dataset

    cfg = build_config(EmbedConfig, params)
    result = run_batch(embed_dataset, cfg, params, f"finished entries are kept in {cfg.out}; rerun the same command "
                                                   "to complete the cache")
    click.echo(json.dumps({k: v for k, v in result.items() if k != "cluster"}))
    report_failures(result)
