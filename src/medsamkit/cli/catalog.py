"""`medsamkit models` and `medsamkit datasets`: what is available and where it comes from."""

from __future__ import annotations

import click

from medsamkit.cli.group import main


@main.command()
def models():
    """List registry models, their weights source and prompt support."""
    from medsamkit.models import MODELS

    for spec in MODELS.values():
        weights = "bundled" if spec.weights == "bundled" else "--checkpoint PATH"
        pts = "box+points" if spec.point_prompts else "box (points after fine-tuning)"
        click.echo(f"{spec.name:14s} {weights:18s} {pts:32s} {spec.description}; weights: {spec.source}")


@main.command()
def datasets():
    """List builtin datasets (usable as --data builtin:NAME), their licence and carrier package."""
    from medsamkit.io.builtin import BUILTINS, package_dir

    for info in BUILTINS.values():
        ok = package_dir(info.relpath.split("/", 1)[0]) is not None
        state = "installed" if ok else "missing"
        click.echo(f"builtin:{info.name:12s} [{state}] {info.description}")
        click.echo(f"{'':21s} source: {info.package}; licence: {info.licence}")
