"""`medsamkit unet train|eval`: the SAMAug MedNet (3-class U-Net) with or without SAM priors."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.interrupt import run_resumable
from medsamkit.cli.options import build_config, max_images_option
from medsamkit.core.runtime import setup


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} must be a comma list of integers, e.g. 16,32,64") from None


@main.group()
def unet() -> None:
    """Train and evaluate the 3-class U-Net (background / nucleus / boundary) of SAMAug."""


@unet.command()
@click.option("--data", required=True, help="training SPEC: folder with images/ + labels/ (instance maps)")
@click.option("--priors", type=click.Path(), default=None,
              help="SAMAug priors folder (from `medsamkit samaug priors`); omit for the baseline")
@click.option("--fusion", type=click.Choice(["clip", "paper", "none"]), default="clip", show_default=True,
              help="prior fusion: seg prior clipped to [0,1], the paper's listing exactly, or unclipped")
@click.option("--out", required=True, type=click.Path(), help="run folder (rerun the command to resume)")
@click.option("--iterations", type=int, default=2000, show_default=True, help="paper: 50000 on a GPU")
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--lr-after", type=float, default=5e-5, show_default=True, help="learning rate after the switch")
@click.option("--lr-switch", type=int, default=None, help="iteration of the switch (default: 60%)")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--crop", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-images", type=int, default=0, show_default=True,
              help="hold out the last N images and report their AJI after training")
@click.option("--channels", default="16,32,64,128,256", show_default=True, help="U-Net channels per level")
@click.option("--strides", default="2,2,2,2", show_default=True)
@click.option("--res-units", "num_res_units", type=int, default=2, show_default=True)
@click.option("--dice", is_flag=True, help="cross-entropy + Dice loss (default: cross-entropy)")
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
@click.option("--threads", type=int, default=None, help="CPU threads (default: env MEDSAMKIT_THREADS, else all)")
def train(**params):
    """Train (or resume) a U-Net; writes RUN/last.pt, metrics.csv, loss.png."""
    from medsamkit.samaug.unet_train import UNetConfig
    from medsamkit.samaug.unet_train import train as run

    cfg = build_config(UNetConfig, params, prior_normalisation=params["fusion"], channels=_ints(params["channels"]),
                       strides=_ints(params["strides"]))
    setup(threads=cfg.threads)
    result = run_resumable(run, cfg, f"rerun the same command to resume from {cfg.out}/last.pt")
    click.echo(f"trained to iteration {result.iterations} ({result.iterations_per_second:.2f} it/s); run in {cfg.out}")
    if result.validation:
        click.echo(f"validation: {json.dumps(result.validation)}")


@unet.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path(), help="run folder of `unet train`")
@click.option("--data", required=True, help="test SPEC: folder with images/ + labels/ (instance maps)")
@click.option("--priors", type=click.Path(), default=None, help="priors of the test images (SAMAug runs)")
@click.option("--out", type=click.Path(), default=None, help="results folder (default: RUN/eval-<data>)")
@max_images_option
@click.option("--glas", is_flag=True, help="also GlaS object F1 and object Dice")
@click.option("--min-size", type=int, default=10, show_default=True, help="smallest nucleus seed in pixels")
@click.option("--no-masks", is_flag=True, help="do not write predicted instance PNGs")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
@click.option("--threads", type=int, default=None, help="CPU threads (default: env MEDSAMKIT_THREADS, else all)")
def eval_(**params):
    """Sliding-window segmentation + AJI per image; writes per_image.csv, summary.json, masks/."""
    from medsamkit.samaug.unet_eval import UNetEvalConfig, evaluate

    cfg = build_config(UNetEvalConfig, params, run=params["run_dir"], save_masks=not params["no_masks"])
    setup(threads=cfg.threads)
    summary = evaluate(cfg)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "eval"}, indent=2))
