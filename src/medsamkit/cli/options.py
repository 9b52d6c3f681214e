"""Option parsers shared by the verbs: `x0,y0,x1,y1` boxes, `x,y[,label]` points, comma lists."""

from __future__ import annotations

import click


def parse_box(text: str) -> list[float]:
    """'x0,y0,x1,y1' -> four floats (click.BadParameter otherwise)."""
    parts = text.split(",")
    try:
        vals = [float(v) for v in parts]
    except ValueError:
        vals = []
    if len(vals) != 4:
        raise click.BadParameter(f"box {text!r} must be x0,y0,x1,y1 (four numbers)")
    return vals


def parse_point(text: str) -> tuple[list[float], int]:
    """'x,y' or 'x,y,label' (label 1 foreground, 0 background) -> ((x, y), label)."""
    parts = text.split(",")
    try:
        vals = [float(v) for v in parts]
    except ValueError:
        vals = []
    if len(vals) not in (2, 3) or (len(vals) == 3 and vals[2] not in (0.0, 1.0)):
        raise click.BadParameter(f"point {text!r} must be x,y or x,y,label with label 1 or 0")
    return vals[:2], int(vals[2]) if len(vals) == 3 else 1


def model_options(fn):
    """--model / --checkpoint / --device, shared by every verb that runs a model."""
    fn = click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")(fn)
    fn = click.option("--checkpoint", type=click.Path(), default=None,
                      help="weights file for models that are not bundled")(fn)
    fn = click.option("--model", "model_name", default="litemedsam", show_default=True,
                      help="registry name (see `medsamkit models`) or a fine-tuned run checkpoint")(fn)
    return fn
