"""`medsamkit demo`: the bundled model on builtin real data, with a report."""

from __future__ import annotations

import click

from medsamkit.cli.group import main
from medsamkit.cli.options import model_options


@main.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path())
@model_options
def demo(out, model_name, checkpoint, device):
    """Zero-shot evaluation (default LiteMedSAM) on builtin:lung-gtv and builtin:dsb-nuclei, box and box+5."""
    from medsamkit.evaluation.demo import DemoConfig, run_demo

    results = run_demo(DemoConfig(out=out, model=model_name, checkpoint=checkpoint, device=device))
    click.echo(f"{'dataset':22s} {'prompt':8s} {'Dice mean':>9s} {'median':>7s} {'n':>5s} {'images/s':>9s}")
    for spec, s in results.items():
        for row in s["table"]:
            d = row["dice"]
            click.echo(f"{spec:22s} {row['mode']:8s} {d['mean']:9.3f} {d['median']:7.3f} {d['n']:5d} "
                       f"{s['images_per_s']:9.2f}")
    click.echo(f"report: {out}/report.md")
