"""`medsamkit embed`: precompute image embeddings into a cache folder (reused by evaluate and finetune)."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.interrupt import report_failures
from medsamkit.cli.options import (
    dask_config,
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
def embed(data, out, max_images, tile_size, tile_overlap, window, min_area, model_name, checkpoint, device,
          workers, threads_per_worker, scheduler):
    """Embed every image (tiles of large images) of DATA into OUT; writes OUT/index.json."""
    from medsamkit.embedding.precompute import EmbedConfig, embed_dataset

    cfg = EmbedConfig(data=data, out=out, model=model_name, checkpoint=checkpoint, device=device,
                      tile_size=tile_size, tile_overlap=tile_overlap, max_images=max_images, min_area=min_area,
                      window=window)
    dask = dask_config(workers, threads_per_worker, scheduler)
    if dask is None:
        click.echo(json.dumps(embed_dataset(cfg)))
        return
    from medsamkit.distributed.embed import embed_on_cluster

    result = embed_on_cluster(cfg, dask)
    click.echo(json.dumps(result))
    report_failures(result)
