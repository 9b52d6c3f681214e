"""`medsamkit demo`: the bundled model on builtin real data, with a report."""

from __future__ import annotations

import click

from medsamkit.cli.group import main
from medsamkit.cli.options import build_config, model_options


@main.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path())
@model_options
def demo(**params):
    """Zero-shot evaluation (default LiteMedSAM) on builtin:lung-gtv and builtin:dsb-nuclei, box and box+5."""
    from medsamkit.evaluation.demo import DemoConfig, run_demo

    cfg = build_config(DemoConfig, params)
    results = run_demo(cfg)
    click.echo(f"{'dataset':22s} {'prompt':8s} {'Dice mean':>9s} {'median':>7s} {'n':>5s} {'images/s':>9s}")
    for spec, s in results.items():
        for row in s["table"]:
            d = row["dice"]
            click.echo(f"{spec:22s} {row['mode']:8s} {d['mean']:9.3f} {d['median']:7.3f} {d['n']:5d} "
                       f"{s['images_per_s']:9.2f}")
    click.echo(f"report: {cfg.out}/report.md")
