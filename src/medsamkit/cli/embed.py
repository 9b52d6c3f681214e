"""`medsamkit embed`: precompute image embeddings into a cache folder (reused by evaluate and finetune)."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.options import max_images_option, model_options, tile_options, window_option


@main.command()
@click.option("--data", required=True, help="data SPEC: folder with images/+labels/, volume, or builtin:NAME")
@click.option("--out", required=True, type=click.Path(), help="cache folder (rerun to complete it)")
@max_images_option
@tile_options
@window_option
@click.option("--min-area", type=int, default=20, show_default=True,
              help="objects smaller than this do not get a tile of their own")
@model_options
def embed(data, out, max_images, tile_size, tile_overlap, window, min_area, model_name, checkpoint, device):
    """Embed every image (tiles of large images) of DATA into OUT; writes OUT/index.json."""
    from medsamkit.embedding.precompute import EmbedConfig, embed_dataset

    cfg = EmbedConfig(data=data, out=out, model=model_name, checkpoint=checkpoint, device=device,
                      tile_size=tile_size, tile_overlap=tile_overlap, max_images=max_images, min_area=min_area,
                      window=window)
    click.echo(json.dumps(embed_dataset(cfg)))
