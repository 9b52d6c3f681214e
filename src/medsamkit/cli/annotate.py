"""`medsamkit annotate`: a local web page to segment and correct objects with a prompted model."""

from __future__ import annotations

import click

from medsamkit.cli.group import main
from medsamkit.cli.options import (
    box_output_option,
    click_ranker_option,
    clicks_option,
    model_options,
    window_option,
)
from medsamkit.core.errors import InputError


@main.command()
@click.argument("source", metavar="FOLDER_OR_SPEC")
@click.option("--out", type=click.Path(), default=None,
              help="annotation folder (default: FOLDER/annotations; ./annotations for builtin:NAME)")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="interface to listen on; anything but loopback exposes the server (the token protects it)")
@click.option("--port", type=int, default=8765, show_default=True, help="TCP port")
@click.option("--class-names", "class_names", default=None,
              help="class names to annotate, comma list (e.g. tumour,node); default: the model's class head")
@click.option("--no-token", "no_token", is_flag=True, help="do not require the session token (loopback only!)")
@click.option("--three-slice", is_flag=True, help="volumes: feed slices k-1, k, k+1 as the three input channels")
@window_option
@click.option("--learn", is_flag=True,
              help="fine-tune the decoder in the background on the committed objects (new version if better)")
@click.option("--learn-min-objects", type=int, default=20, show_default=True,
              help="committed objects (on >= 2 images) before a learn round, and new ones before the next")
@click.option("--learn-budget", type=float, default=180.0, show_default=True, help="seconds per learn round")
@click.option("--monailabel", is_flag=True,
              help="also serve MONAI Label's API (3D Slicer, OHIF, QuPath) at the printed /monailabel/TOKEN/ URL")
@clicks_option
@click_ranker_option
@box_output_option
@model_options
def annotate(source, out, host, port, class_names, no_token, three_slice, window, learn, learn_min_objects,
             learn_budget, monailabel, clicks, click_ranker, box_output, model_name, checkpoint, device):
    """Annotate 2D images or volumes in a local web page (box + clicks, objects, propagation, autosave).

    FOLDER holds 2D images (optional labels/ to correct); any data SPEC works (builtin:dsb-nuclei). Volumes:
    NIfTI / NRRD files, IMAGE::LABEL, DICOM series folders (RTSTRUCT / SEG to correct), nnU-Net folders,
    builtin:lung-gtv; --window is the model input's window (the page's display window is separate).

    Prints one line `medsamkit annotate: http://127.0.0.1:PORT/?token=TOKEN` (with --monailabel a second with
    the MONAI Label server address), then serves until Ctrl-C.
    """
    try:
        from medsamkit.annotate.http.launch import serve
        from medsamkit.annotate.session.config import AnnotateConfig
    except ImportError as exc:  # the server's packages are the `annotate` extra
        raise InputError(f"annotate needs {exc.name}: pip install 'medsamkit[annotate]' "
                         "(make install does)") from None

    names = [c.strip() for c in (class_names or "").split(",") if c.strip()]
    cfg = AnnotateConfig(source=source, out=out, model=model_name, checkpoint=checkpoint, device=device,
                         host=host, port=port, class_names=names, clicks=clicks, click_ranker=click_ranker,
                         box_output=box_output,
                         token=not no_token, window=window, three_slice=three_slice, learn=learn,
                         learn_min_objects=learn_min_objects, learn_budget=learn_budget, monailabel=monailabel)
    try:
        serve(cfg)
    except KeyboardInterrupt:
        click.echo("medsamkit annotate: stopped", err=True)
