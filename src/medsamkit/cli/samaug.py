"""`medsamkit samaug masks|priors`: everything-mode masks and SAMAug prior maps for a data SPEC."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.interrupt import report_failures
from medsamkit.cli.options import dask_config, dask_options, max_images_option, model_options, window_option


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
        # cli/options.py's tile_options carries the embedding cache's overlap (64); everything mode's tiles
        # overlap by 48 (more than a large nucleus), so the same flags are declared here with its defaults.
        click.option("--tile", "--tile-size", "tile_size", type=int, default=256, show_default=True,
                     help="tile size in px at native resolution (0: the whole image as one tile)"),
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


def _config(data, out, write_priors, model_name, checkpoint, device, thickness, **kw):
    from medsamkit.samaug.everything import EverythingConfig
    from medsamkit.samaug.priors import PriorsConfig

    everything = EverythingConfig(
        proposal=kw["proposal"],
        pred_iou_thresh=kw["pred_iou_thresh"],
        stability_thresh=kw["stability_thresh"],
        box_nms_thresh=kw["box_nms_thresh"],
        min_area=kw["min_area"],
        max_area=kw["max_area"] or None,
        tile_size=kw["tile_size"],
        tile_overlap=kw["tile_overlap"],
        points_per_side=kw["points_per_side"],
        point_window_tokens=kw["point_window"] or None,
        local_decode=not kw["full_decoder"],
    )
    return PriorsConfig(
        data=data, out=out, model=model_name, checkpoint=checkpoint, device=device, everything=everything,
        max_images=kw["max_images"], window=kw["window"], write_priors=write_priors, boundary_thickness=thickness,
    )


def _run(cfg, workers, threads_per_worker, scheduler) -> dict:
    """compute_priors here, or on Dask with --workers / --scheduler."""
    dask = dask_config(workers, threads_per_worker, scheduler)
    if dask is None:
        from medsamkit.samaug.priors import compute_priors

        return compute_priors(cfg)
    from medsamkit.distributed.priors import priors_on_cluster

    return priors_on_cluster(cfg, dask)


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
def masks(data, out, model_name, checkpoint, device, workers, threads_per_worker, scheduler, **kw):
    """Everything-mode masks for every image of DATA into OUT/masks/NAME.npz (resumable)."""
    cfg = _config(data, out, False, model_name, checkpoint, device, 2, **kw)
    index = _run(cfg, workers, threads_per_worker, scheduler)
    _summary(index)
    report_failures(index)


@samaug.command()
@click.option("--data", required=True, help="data SPEC (folder with images/ + labels/, builtin:NAME, ...)")
@click.option("--out", required=True, type=click.Path(), help="output folder (masks/, priors/, visuals/)")
@click.option("--boundary-thickness", type=int, default=2, show_default=True,
              help="outer boundary dilated by a disk of radius thickness-1")
@everything_options
@model_options
@dask_options
def priors(data, out, boundary_thickness, model_name, checkpoint, device, workers, threads_per_worker, scheduler,
           **kw):
    """Masks, segmentation/boundary priors (npz + 16-bit PNG) and visuals for every image of DATA."""
    cfg = _config(data, out, True, model_name, checkpoint, device, boundary_thickness, **kw)
    index = _run(cfg, workers, threads_per_worker, scheduler)
    _summary(index)
    report_failures(index)
