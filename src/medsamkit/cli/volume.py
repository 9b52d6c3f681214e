"""`medsamkit segment-volume` and `medsamkit evaluate-volume`: 3D volumes prompted slice by slice or propagated."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.interrupt import run_resumable
from medsamkit.cli.options import model_options

_WINDOW_HELP = "CT window: lung, soft_tissue, bone, ... or lo,hi in HU (default: soft_tissue for CT, else 0.5-99.5%)"


@main.command("segment-volume")
@click.argument("volume", type=click.Path())
@click.option("--label", default=None, type=click.Path(),
              help="label volume on the same grid: prompts come from its classes (values kept in the output)")
@click.option("--box-slice", default=None,
              help="z,x0,y0,x1,y1 voxel indices: propagate this box from slice z up and down (output value 1)")
@click.option("--prompts", default="box", show_default=True, help="prompt mode from the label: box, box+K, ...")
@click.option("--propagate", is_flag=True, help="with --label: propagate each class from its largest slice")
@click.option("--three-slice", is_flag=True, help="feed slices k-1, k, k+1 as the three input channels")
@click.option("--window", default=None, help=_WINDOW_HELP)
@click.option("--classes", default=None, help="comma list of label values to segment (default: all)")
@click.option("--min-area", type=int, default=20, show_default=True,
              help="px: smaller label parts are not prompted; propagation stops below it")
@click.option("--margin", type=float, default=0.0, show_default=True,
              help="px added around each propagated box (box+K enlarges only the start box)")
@click.option("--min-iou", type=float, default=0.0, show_default=True,
              help="propagation also stops where the model's predicted IoU falls below this")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(), help="output label volume (.nii.gz)")
@model_options
def segment_volume(volume, label, box_slice, prompts, propagate, three_slice, window, classes, min_area,
                   margin, min_iou, seed, out, model_name, checkpoint, device):
    """Segment VOLUME (NIfTI, NRRD, DICOM folder) and write a NIfTI label map on its grid."""
    from medsamkit.core.errors import InputError
    from medsamkit.volumes.engine import SegmentVolumeConfig, run_segment_volume

    try:
        class_list = [int(c) for c in classes.split(",")] if classes else None
    except ValueError:
        raise InputError(f"--classes {classes!r} must be a comma list of integers") from None
    cfg = SegmentVolumeConfig(volume=volume, out=out, label=label, box_slice=box_slice, prompts=prompts,
                              propagate=propagate, three_slice=three_slice, window=window, classes=class_list,
                              min_area=min_area, margin=margin, min_iou=min_iou, seed=seed, model=model_name,
                              checkpoint=checkpoint, device=device)
    click.echo(json.dumps(run_segment_volume(cfg)))


@main.command("evaluate-volume")
@click.option("--data", required=True,
              help="volume SPEC: builtin:lung-gtv, IMAGE::LABEL, nnU-Net folder, DICOM folder with RTSTRUCT/SEG")
@click.option("--prompts", default="box", show_default=True, help="comma list: box, box+K, jitter+K, center, ...")
@click.option("--propagate", is_flag=True, help="propagate from each class's largest slice instead of slice-wise")
@click.option("--three-slice", is_flag=True, help="feed slices k-1, k, k+1 as the three input channels")
@click.option("--predictions", default=None, type=click.Path(),
              help="score these label maps (a NIfTI, or a folder of <volume>.nii.gz) instead of running a model")
@click.option("--window", default=None, help=_WINDOW_HELP)
@click.option("--max-volumes", type=int, default=None)
@click.option("--min-area", type=int, default=20, show_default=True)
@click.option("--margin", type=float, default=0.0, show_default=True, help="px around each propagated box")
@click.option("--min-iou", type=float, default=0.0, show_default=True,
              help="propagation also stops where the predicted IoU falls below this")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-masks", is_flag=True, help="write predicted label volumes to OUT/masks/ as NIfTI")
@click.option("--out", required=True, type=click.Path(), help="results folder (rerun to resume)")
@model_options
def evaluate_volume(data, prompts, propagate, three_slice, predictions, window, max_volumes, min_area, margin,
                    min_iou, seed, save_masks, out, model_name, checkpoint, device):
    """Per-volume Dice / NSD / HD95 (mm) and per-slice Dice; writes per_volume.csv, per_slice.csv, summary."""
    from medsamkit.volumes.engine import EvaluateVolumeConfig, evaluate_volumes

    cfg = EvaluateVolumeConfig(data=data, out=out, prompts=prompts, propagate=propagate, three_slice=three_slice,
                               model=model_name, checkpoint=checkpoint, device=device, window=window,
                               max_volumes=max_volumes, seed=seed, min_area=min_area, margin=margin, min_iou=min_iou,
                               save_masks=save_masks, predictions=predictions)
    summary = run_resumable(evaluate_volumes, cfg,
                            f"finished volumes are kept in {out}; rerun the same command to resume")
    click.echo(open(f"{out}/summary.md").read())
    click.echo(f"{summary['volumes']} volumes; results in {out}")
