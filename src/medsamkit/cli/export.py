"""`medsamkit export`: write a model's encoder and decoder as ONNX files for onnxruntime."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.options import model_options


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for encoder.onnx, decoder.onnx")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset version")
@model_options(device=False)
def export(out, opset, model_name, checkpoint):
    """Export the image encoder and the prompt decoder to ONNX (load with models.onnx_backend.OnnxSamModel)."""
    from medsamkit.models import load_model
    from medsamkit.models.export import export_onnx

    model = load_model(model_name, checkpoint, "cpu")  # the graph is traced on the CPU; it runs on any device
    click.echo(json.dumps(export_onnx(model, out, opset=opset, name=model_name)))
