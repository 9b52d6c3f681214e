"""`medsamkit samaug masks|priors`: everything-mode masks and SAMAug prior maps for a data SPEC."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.interrupt import report_failures, run_batch
from medsamkit.cli.options import build_config, dask_options, max_images_option, model_options, window_option


def everything_options(fn):
    """The key everything-mode flags (defaults: samaug.everything.EverythingConfig)."""
    options = [
        click.option("--proposal", type=click.Choice(["auto", "blobs", "grid", "points"]), default="auto",
                     show_default=True,
                     help="prompts: points grid (point models), box grid (naive) or boxes around stain blobs"),
        click.option("--pred-iou-thresh", type=float, default=0.5, show_default=True),
        click.option("--stability-thresh", type=float, default=0.6, show_default=True),
        click.option("--box-nms-thresh", type=float, default=0.5, show_default=True),
        click.option("--min-area", type=int, default=20, show_default=True, help="pixels"),
        click.option("--max-area", type=int, default=3000, show_default=True, help="pixels; 0 = no limit"),
        # Not cli/options.py's tile_options: its auto size is the view rule, which picks a view per labelled
        # object, and everything mode has no objects yet; and its overlap (64) is the embedding cache's, where
        # everything mode needs only more than a large nucleus (48).
        click.option("--tile", "--tile-size", "tile_size", type=int, default=256, show_default=True,
                     help="tile size in px at native resolution (0: the whole image as one tile); a fixed size, "
                          "not auto: the other verbs' auto picks a view per labelled object, and everything "
                          "mode has no objects to look at yet"),
        click.option("--tile-overlap", type=int, default=48, show_default=True,
                     help="overlap of the tile grid in px (more than the largest object)"),
        click.option("--points-per-side", type=int, default=16, show_default=True, help="points mode, per tile"),
        click.option("--point-window", type=int, default=16, show_default=True,
                     help="points mode: decode each point on this many embedding tokens around it (0: all)"),
        click.option("--full-decoder", is_flag=True, help="decode on the whole embedding (slower; no windows)"),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return max_images_option(window_option(fn))


def _run(params: dict, write_priors: bool) -> None:
    """compute_priors here, or on Dask with --workers / --scheduler; a one-line summary, failed cases."""
    from medsamkit.samaug.everything import EverythingConfig
    from medsamkit.samaug.priors import PriorsConfig, compute_priors

    everything = build_config(EverythingConfig, params, max_area=params["max_area"] or None,
                              point_window_tokens=params["point_window"] or None,
                              local_decode=not params["full_decoder"])
    cfg = build_config(PriorsConfig, params, everything=everything, write_priors=write_priors)
    index = run_batch(compute_priors, cfg, params, f"finished images are kept in {cfg.out}; rerun the same command "
                                                    "to resume")
    _summary(index)
    report_failures(index)


def _summary(index: dict) -> None:
    images = index["images"]
    done = [e for e in images if not e.get("skipped")]
    click.echo(json.dumps({
        "images": len(images), "computed": len(done), "skipped": len(images) - len(done),
        "masks": sum(e.get("masks", 0) for e in done),
    }))


@main.group()
def samaug() -> None:
    """SAMAug (paper 000): everything-mode masks and segmentation/boundary prior maps."""


@samaug.command()
@click.option("--data", required=True, help="data SPEC (folder with images/ + labels/, builtin:NAME, ...)")
@click.option("--out", required=True, type=click.Path(), help="output folder (masks/, index.json)")
@everything_options
@model_options
@dask_options
def masks(**params):
    """Everything-mode masks for every image of DATA into OUT/masks/NAME.npz (resumable)."""
    _run(params, write_priors=False)


@samaug.command()
@click.option("--data", required=True, help="data SPEC (folder with images/ + labels/, builtin:NAME, ...)")
@click.option("--out", required=True, type=click.Path(), help="output folder (masks/, priors/, visuals/)")
@click.option("--boundary-thickness", type=int, default=2, show_default=True,
              help="outer boundary dilated by a disk of radius thickness-1")
@everything_options
@model_options
@dask_options
def priors(**params):
    """Masks, segmentation/boundary priors (npz + 16-bit PNG) and visuals for every image of DATA."""
    _run(params, write_priors=True)
