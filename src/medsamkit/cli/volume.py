"""`medsamkit segment-volume` and `medsamkit evaluate-volume`: 3D volumes prompted slice by slice or propagated."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.interrupt import print_report, run_batch
from medsamkit.cli.options import (
    build_config,
    cache_option,
    classes_option,
    click_ranker_option,
    clicks_option,
    dask_options,
    executor_of,
    max_images_option,
    model_options,
    prompts_option,
    save_masks_option,
    window_option,
)


@main.command("segment-volume")
@click.argument("volume", type=click.Path())
@click.option("--label", default=None, type=click.Path(),
              help="label volume on the same grid: prompts come from its classes (values kept in the output)")
@click.option("--box-slice", default=None,
              help="z,x0,y0,x1,y1 voxel indices: propagate this box from slice z up and down (output value 1)")
@click.option("--box3d", default=None,
              help="z_min,z_max,z,x0,y0,x1,y1 voxel indices: a 3D box (a z-range and a 2D box on slice z) answered "
                   "by the 3D engine, which stops where the object ends (output value 1)")
@prompts_option("box")
@click.option("--propagate", is_flag=True, help="with --label: propagate each class from its largest slice")
@click.option("--three-slice", is_flag=True, help="feed slices k-1, k, k+1 as the three input channels")
@window_option
@classes_option
@click.option("--min-area", type=int, default=20, show_default=True,
              help="px: smaller label parts are not prompted; propagation stops below it")
@click.option("--margin", type=float, default=0.0, show_default=True,
              help="px added around each propagated box (box+K enlarges only the start box)")
@click.option("--min-iou", type=float, default=0.0, show_default=True,
              help="propagation also stops where the model's predicted IoU falls below this")
@click.option("--seed", type=int, default=0, show_default=True)
@cache_option
@max_images_option
@click.option("-o", "--out", required=True, type=click.Path(),
              help="output label volume (.nii.gz); for a SPEC of many volumes a folder (rerun to resume)")
@model_options
@dask_options
def segment_volume(**params):
    """Segment VOLUME (NIfTI, NRRD, DICOM folder) and write a NIfTI label map on its grid (one prompt mode).

    Without --label/--box-slice and with -o FOLDER (not a .nii/.nii.gz name), VOLUME is a SPEC of labelled
    volumes (builtin:lung-gtv, nnU-Net folder, DICOM folder with RTSTRUCT/SEG, IMAGE::LABEL): one
    FOLDER/<volume>.nii.gz per volume on its grid, prompted from its label; rerun to resume.
    """
    out = params["out"]
    if params["label"] is None and params["box_slice"] is None and params["box3d"] is None and not str(out).lower().endswith((".nii", ".nii.gz")):
        from medsamkit.volumes.segment_many import SegmentDatasetConfig, segment_volumes

        cfg = build_config(SegmentDatasetConfig, params, data=params["volume"])
        summary = run_batch(segment_volumes, cfg, params,
                            f"finished volumes are kept in {out}; rerun the same command to resume")
        print_report(out, f"{summary['volumes']} label volumes in {out}", summary)
        return
    if executor_of(params) is not None or params["max_images"] is not None:
        raise click.UsageError("--workers/--scheduler/--max-images need a SPEC of many volumes and -o FOLDER")
    from medsamkit.volumes import SegmentVolumeConfig, run_segment_volume

    click.echo(json.dumps(run_segment_volume(build_config(SegmentVolumeConfig, params))))


@main.command("evaluate-volume")
@click.option("--data", required=True,
              help="volume SPEC: builtin:lung-gtv, IMAGE::LABEL, nnU-Net folder, DICOM folder with RTSTRUCT/SEG")
@prompts_option("box")
@click.option("--propagate", is_flag=True, help="propagate from each class's largest slice instead of slice-wise")
@click.option("--three-slice", is_flag=True, help="feed slices k-1, k, k+1 as the three input channels")
@click.option("--protocol", type=click.Choice(["cvpr25"]), default=None,
              help="cvpr25: the CVPR 2025 interactive challenge protocol per class (3D box, then 5 clicks at the "
                   "largest 3D error; Dice, surfel NSD at 2 mm, HD95, AUCs by step; docs/protocols.md)")
@click.option("--start", type=click.Choice(["box", "clicks"]), default="box", show_default=True,
              help="the protocol's first interaction: the 3D box, or none (clicks only; step 0 scores 0)")
@clicks_option
@click_ranker_option
@click.option("--predictions", default=None, type=click.Path(),
              help="score these label maps (a NIfTI, or a folder of <volume>.nii.gz) instead of running a model")
@window_option
@classes_option
@max_images_option
@click.option("--min-area", type=int, default=20, show_default=True)
@click.option("--margin", type=float, default=0.0, show_default=True, help="px around each propagated box")
@click.option("--min-iou", type=float, default=0.0, show_default=True,
              help="propagation also stops where the predicted IoU falls below this")
@click.option("--seed", type=int, default=0, show_default=True)
@cache_option
@save_masks_option
@click.option("--out", required=True, type=click.Path(), help="results folder (rerun to resume)")
@model_options
@dask_options
def evaluate_volume(**params):
    """Per-volume Dice / NSD / HD95 (mm) and per-slice Dice; writes per_volume.csv, per_slice.csv, summary
    (predicted label maps under OUT/masks/ with --save-masks). With --protocol cvpr25: steps.csv, classes.csv,
    summary and a Dice/NSD-by-step figure of the interactive protocol instead."""
    from medsamkit.volumes import EvaluateVolumeConfig, evaluate_volumes

    cfg = build_config(EvaluateVolumeConfig, params)
    summary = run_batch(evaluate_volumes, cfg, params,
                        f"finished volumes are kept in {cfg.out}; rerun the same command to resume")
    print_report(cfg.out, f"{summary['volumes']} volumes; results in {cfg.out}", summary)
