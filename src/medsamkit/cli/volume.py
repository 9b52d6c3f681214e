"""`medsamkit segment-volume` and `medsamkit evaluate-volume`: 3D volumes prompted slice by slice or propagated."""

from __future__ import annotations

import json

import click

from medsamkit.cli.group import main
from medsamkit.cli.interrupt import print_report, run_batch
from medsamkit.cli.options import (
    cache_option,
    classes_option,
    dask_config,
    dask_options,
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
def segment_volume(volume, label, box_slice, prompts, propagate, three_slice, window, classes, min_area,
                   margin, min_iou, seed, cache, max_images, out, model_name, checkpoint, device, workers,
                   threads_per_worker, scheduler):
    """Segment VOLUME (NIfTI, NRRD, DICOM folder) and write a NIfTI label map on its grid (one prompt mode).

    Without --label/--box-slice and with -o FOLDER (not a .nii/.nii.gz name), VOLUME is a SPEC of labelled
    volumes (builtin:lung-gtv, nnU-Net folder, DICOM folder with RTSTRUCT/SEG, IMAGE::LABEL): one
    FOLDER/<volume>.nii.gz per volume on its grid, prompted from its label; rerun to resume.
    """
    dask = dask_config(workers, threads_per_worker, scheduler)
    if label is None and box_slice is None and not str(out).lower().endswith((".nii", ".nii.gz")):
        _segment_many(volume, dict(
            prompts=prompts, propagate=propagate, three_slice=three_slice, window=window, classes=classes,
            min_area=min_area, margin=margin, min_iou=min_iou, seed=seed, cache=cache, max_images=max_images,
            out=out, model=model_name, checkpoint=checkpoint, device=device), dask)
        return
    if dask is not None or max_images is not None:
        raise click.UsageError("--workers/--scheduler/--max-images need a SPEC of many volumes and -o FOLDER")
    from medsamkit.volumes import SegmentVolumeConfig, run_segment_volume

    cfg = SegmentVolumeConfig(volume=volume, out=out, label=label, box_slice=box_slice, prompts=prompts,
                              propagate=propagate, three_slice=three_slice, window=window, classes=classes,
                              min_area=min_area, margin=margin, min_iou=min_iou, seed=seed, model=model_name,
                              checkpoint=checkpoint, device=device, cache=cache)
    click.echo(json.dumps(run_segment_volume(cfg)))


def _segment_many(data: str, settings: dict, dask) -> None:
    from medsamkit.volumes.segment_many import SegmentVolumesConfig, segment_volumes

    out = settings["out"]
    cfg = SegmentVolumesConfig(data=data, **settings)
    summary = run_batch(segment_volumes, cfg, f"finished volumes are kept in {out}; rerun the same command to resume",
                        dask, _segment_cluster)
    print_report(out, f"{summary['volumes']} label volumes in {out}", summary)


def _segment_cluster():
    from medsamkit.distributed.volumes import segment_volumes_on_cluster

    return segment_volumes_on_cluster


@main.command("evaluate-volume")
@click.option("--data", required=True,
              help="volume SPEC: builtin:lung-gtv, IMAGE::LABEL, nnU-Net folder, DICOM folder with RTSTRUCT/SEG")
@prompts_option("box")
@click.option("--propagate", is_flag=True, help="propagate from each class's largest slice instead of slice-wise")
@click.option("--three-slice", is_flag=True, help="feed slices k-1, k, k+1 as the three input channels")
@click.option("--predictions", default=None, type=click.Path(),
              help="score these label maps (a NIfTI, or a folder of <volume>.nii.gz) instead of running a model")
@window_option
@classes_option
@max_images_option
@click.option("--max-volumes", "max_volumes", type=int, default=None, hidden=True,
              help="former name of --max-images")
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
def evaluate_volume(data, prompts, propagate, three_slice, predictions, window, classes, max_images, max_volumes,
                    min_area, margin, min_iou, seed, cache, save_masks, out, model_name, checkpoint, device,
                    workers, threads_per_worker, scheduler):
    """Per-volume Dice / NSD / HD95 (mm) and per-slice Dice; writes per_volume.csv, per_slice.csv, summary
    (predicted label maps under OUT/masks/ with --save-masks)."""
    from medsamkit.volumes import EvaluateVolumeConfig, evaluate_volumes

    cfg = EvaluateVolumeConfig(data=data, out=out, prompts=prompts, propagate=propagate, three_slice=three_slice,
                               model=model_name, checkpoint=checkpoint, device=device, window=window,
                               max_images=max_images if max_images is not None else max_volumes, classes=classes,
                               seed=seed, min_area=min_area, margin=margin, min_iou=min_iou, save_masks=save_masks,
                               predictions=predictions, cache=cache)
    summary = run_batch(evaluate_volumes, cfg, f"finished volumes are kept in {out}; rerun the same command to resume",
                        dask_config(workers, threads_per_worker, scheduler), _cluster)
    print_report(out, f"{summary['volumes']} volumes; results in {out}", summary)


def _cluster():
    from medsamkit.distributed.volumes import evaluate_volumes_on_cluster

    return evaluate_volumes_on_cluster
