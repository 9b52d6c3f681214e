"""The verbs' shared flags, their parsers (`x0,y0,x1,y1` boxes, `x,y[,label]` points) and the one way a verb turns
its parameters into a config (`build_config`) and an executor (`executor_of`)."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

import click

C = TypeVar("C")


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


def model_options(fn=None, device: bool = True):
    """--model / --checkpoint / --device, shared by every verb that runs a model (``device=False``: a verb
    whose work does not depend on the device, e.g. ONNX export, which traces on the CPU)."""
    if fn is None:
        return lambda f: model_options(f, device)
    if device:
        fn = click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")(fn)
    fn = click.option("--checkpoint", type=click.Path(), default=None,
                      help="weights file for models that are not bundled")(fn)
    fn = click.option("--model", "model_name", default="litemedsam", show_default=True,
                      help="registry name (see `medsamkit models`) or a fine-tuned run checkpoint")(fn)
    return fn


# --- one flag per concept, shared by every verb where it applies (README: verbs x options) -----------------


def classes_option(fn):
    """--classes: the label values to process (comma list; default all)."""
    return click.option("--classes", default=None,
                        help="label values to process, comma list (e.g. 1,3); default: all")(fn)


def window_option(fn):
    """--window: the CT/MR intensity window of volume data (a preset name or lo,hi)."""
    return click.option("--window", default=None,
                        help="intensity window for volumes: lung, soft_tissue, bone, brain, ... or lo,hi "
                             "(default: CT soft tissue / MR percentiles; builtin:lung-gtv: lung)")(fn)


def tile_options(fn):
    """--tile / --tile-overlap: native-resolution tiles of large images (same values as `embed` used)."""
    fn = click.option("--tile-overlap", type=int, default=64, show_default=True,
                      help="overlap of the tile grid in px (use the value the cache was built with)")(fn)
    fn = click.option("--tile", "tile_size", type=int, default=None,
                      help="tile size in px at native resolution (default: auto, 0: whole image)")(fn)
    return fn


def max_images_option(fn):
    """--max-images: process at most N images / volumes."""
    return click.option("--max-images", type=int, default=None, help="at most N images / volumes")(fn)


def cache_option(fn):
    """--cache: the embedding cache folder (see `medsamkit embed`)."""
    return click.option("--cache", type=click.Path(), default=None,
                        help="embedding cache folder (see `embed`)")(fn)


def save_masks_option(fn):
    """--save-masks: write the predicted label maps."""
    return click.option("--save-masks", is_flag=True, help="write predicted label maps")(fn)


def multimask_option(fn):
    """--multimask: three candidates per prompt, the best predicted IoU kept."""
    return click.option("--multimask", is_flag=True,
                        help="3 candidate masks per prompt, keep the best predicted IoU")(fn)


def clicks_option(fn):
    """--clicks: how clicks become masks (prompts.clicks): auto, native, search or mixed."""
    return click.option("--clicks", type=click.Choice(["auto", "native", "search", "mixed"]), default="auto",
                        show_default=True,
                        help="how clicks become masks: native (the decoder reads them), search (boxes searched "
                             "around them, corrections edit the mask; for box-only models), mixed (clicks given "
                             "together read by the decoder, each later click a search correction), auto (a "
                             "fine-tuned run's validated choice, else native for models trained with points, "
                             "else search)")(fn)


def click_ranker_option(fn):
    """--click-ranker: the click search's ranking fitted by `medsamkit fit-clicks` (its --out or ranking.json)."""
    return click.option("--click-ranker", type=click.Path(), default=None,
                        help="the click search's ranking fitted to your data by `medsamkit fit-clicks` (its --out "
                             "folder or ranking.json; default: the hand-set ranking)")(fn)


def box_output_option(fn):
    """--box-output: which of the model's outputs answers a box alone (prompts.boxes): single or fit."""
    return click.option("--box-output", type=click.Choice(["single", "fit"]), default="single", show_default=True,
                        help="which output answers a box alone: single (the single-mask output) or fit (the "
                             "multimask output that fills the box clearly better, when one does; for box-only "
                             "models that under-segment inside a tight box, README 'Which output answers a box')")(fn)


def prompts_option(default: str):
    """--prompts: a comma list of prompt modes (box, box+K, jitter+K, center, randomN, iterN, box+iterN)."""
    return click.option("--prompts", default=default, show_default=True,
                        help="comma list of prompt modes: box, box+K, jitter+K, center, randomN, iterN, box+iterN")


def dask_options(fn):
    """--workers / --threads-per-worker / --scheduler: run the cases as tasks on Dask (docs/architecture.md)."""
    fn = click.option("--scheduler", default=None,
                      help="address of a running Dask scheduler (tcp://host:8786), e.g. from dask-jobqueue")(fn)
    fn = click.option("--threads-per-worker", type=int, default=1, show_default=True,
                      help="torch threads (and concurrent tasks) per Dask worker")(fn)
    fn = click.option("--workers", type=int, default=None,
                      help="run on a local Dask cluster of N worker processes (one task per image/volume)")(fn)
    return fn


def build_config(cls: type[C], params: dict, **values) -> C:
    """``cls`` (a config dataclass) filled from a command's parameters: each field takes the parameter of its
    name (``--model``, whose parameter is ``model_name``, fills ``model``); ``values`` set the other fields."""
    names = {f.name for f in fields(cls)}
    given = {("model" if k == "model_name" else k): v for k, v in params.items()}
    return cls(**{**{k: v for k, v in given.items() if k in names}, **values})


def executor_of(params: dict):
    """The executor of a batch verb: None (this process) unless --workers or --scheduler ask for Dask."""
    workers, scheduler = params.get("workers"), params.get("scheduler")
    if workers is None and not scheduler:
        return None
    from medsamkit.distributed.cluster import DaskConfig
    from medsamkit.distributed.runner import DaskExecutor

    return DaskExecutor(DaskConfig(workers=workers, threads_per_worker=params["threads_per_worker"],
                                   scheduler=scheduler))
