"""`medsamkit segment`: prompt a model on one image file and write a label mask (one label per prompt)."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.options import (
    box_output_option,
    build_config,
    click_ranker_option,
    clicks_option,
    model_options,
    multimask_option,
    parse_box,
    parse_point,
)


@main.command()
@click.argument("image", type=click.Path())
@click.option("--box", "boxes", multiple=True, help="x0,y0,x1,y1 in pixels; repeat for several objects")
@click.option("--point", "points", multiple=True,
              help="x,y[,label]; with boxes: one per box, in order; without: all points form ONE prompt")
@click.option("-o", "--out", type=click.Path(), required=True, help="output mask (PNG or .npy)")
@multimask_option
@clicks_option
@click_ranker_option
@box_output_option
@model_options
def segment(**params):
    """Segment IMAGE with box and/or point prompts; prints per-prompt predicted IoU as JSON lines."""
    from medsamkit.segment import SegmentConfig, segment_image

    cfg = build_config(SegmentConfig, params, boxes=[parse_box(b) for b in params["boxes"]],
                       points=[parse_point(p) for p in params["points"]])
    for row in segment_image(cfg):
        click.echo(json.dumps(row))
