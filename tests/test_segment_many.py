"""`segment-volume SPEC -o FOLDER`: a folder of real CT volumes (slabs of builtin:lung-gtv written as an nnU-Net
folder) segmented into one NIfTI label map per volume, with and without Dask (the same voxels), resumed after
a partial run, and a bad volume reported once while the others are written."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medsamkit.distributed.cluster import DaskConfig
from medsamkit.distributed.runner import DaskExecutor
from medsamkit.volumes.segment_many import SegmentDatasetConfig, segment_volumes


def _write(path: Path, array_zyx: np.ndarray, spacing_zyx) -> None:
    affine = np.diag([spacing_zyx[2], spacing_zyx[1], spacing_zyx[0], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), affine), str(path))


def _slabs(root: Path, bad: bool = False, n: int = 3) -> Path:
    """``n`` slabs of pat_2 around its tumour (2-3 labelled slices each) as imagesTr/ + labelsTr/; with
    ``bad`` one more case whose label is one voxel narrower than its image."""
    from medsamkit.io.datasets import open_dataset

    case = open_dataset("builtin:lung-gtv").loaders[1]()
    hu, label, spacing = case.meta["volume"].array, case.label, case.spacing
    zs = np.flatnonzero(label.any((1, 2)))
    ys, xs = np.flatnonzero(label.any((0, 2))), np.flatnonzero(label.any((0, 1)))
    y0, y1, x0, x1 = max(ys[0] - 24, 0), ys[-1] + 24, max(xs[0] - 24, 0), xs[-1] + 24
    cuts = np.array_split(zs, n)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for k, part in enumerate(cuts):
        z0, z1 = max(part[0] - 1, 0), part[-1] + 1
        _write(root / "imagesTr" / f"slab{k}_0000.nii.gz", hu[z0:z1, y0:y1, x0:x1].astype(np.int16), spacing)
        _write(root / "labelsTr" / f"slab{k}.nii.gz", label[z0:z1, y0:y1, x0:x1].astype(np.uint8), spacing)
    if bad:
        z0, z1 = zs[0], zs[-1] + 1
        _write(root / "imagesTr" / "broken_0000.nii.gz", hu[z0:z1, y0:y1, x0:x1].astype(np.int16), spacing)
        _write(root / "labelsTr" / "broken.nii.gz", label[z0:z1, y0:y1, x0:x1 - 1].astype(np.uint8), spacing)
    return root


def _cfg(data: Path, out: Path, **kw) -> SegmentDatasetConfig:
    return SegmentDatasetConfig(data=str(data), out=str(out), show_progress=False, **kw)


@pytest.fixture(scope="module")
def slabs(tmp_path_factory) -> Path:
    return _slabs(tmp_path_factory.mktemp("slabs") / "ct")


@pytest.fixture(scope="module")
def local_run(slabs, tmp_path_factory):
    """The one-process run, on one thread like each worker (float kernels then agree bit for bit)."""
    import torch

    out = tmp_path_factory.mktemp("local") / "seg"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = segment_volumes(_cfg(slabs, out))
    finally:
        torch.set_num_threads(threads)
    return out, summary


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def _rows(folder: Path) -> list[tuple]:
    with (folder / "per_class.csv").open(newline="") as fh:
        return sorted(tuple((k, v) for k, v in r.items() if k != "seconds") for r in csv.DictReader(fh))


def test_a_folder_of_volumes_gives_one_label_map_per_volume_on_its_grid(slabs, local_run):
    out, summary = local_run
    labels = _labels(out)
    assert sorted(labels) == ["slab0.nii.gz", "slab1.nii.gz", "slab2.nii.gz"]  # the cases' own names
    assert summary["volumes"] == 3 and summary["mean_dice"]["1"] > 0.5
    for name, pred in labels.items():
        image = nib.load(str(slabs / "imagesTr" / name.replace(".nii.gz", "_0000.nii.gz")))
        assert pred.shape == image.shape and np.allclose(nib.load(str(out / name)).affine, image.affine)
        assert set(np.unique(pred)) <= {0, 1} and pred.any()


def test_two_workers_write_the_same_label_maps(slabs, local_run, tmp_path):
    local_out, _ = local_run
    summary = segment_volumes(_cfg(slabs, tmp_path / "dask"), executor=DaskExecutor(DaskConfig(workers=2)))
    assert summary["failed"] == [] and summary["volumes"] == 3
    mine, theirs = _labels(tmp_path / "dask"), _labels(local_out)
    assert sorted(mine) == sorted(theirs)
    for name in theirs:
        assert np.array_equal(mine[name], theirs[name]), name
    assert _rows(tmp_path / "dask") == _rows(local_out)


@pytest.mark.slow
def test_a_partial_run_resumes_on_the_cluster_and_ends_identical(slabs, local_run, tmp_path):
    import torch

    local_out, _ = local_run
    out = tmp_path / "seg"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = segment_volumes(_cfg(slabs, out, max_images=1))
    finally:
        torch.set_num_threads(threads)
    assert first["volumes"] == 1
    written = (out / "slab0.nii.gz").stat().st_mtime_ns
    summary = segment_volumes(_cfg(slabs, out), executor=DaskExecutor(DaskConfig(workers=2)))
    assert summary["new_volumes"] == 2 and summary["volumes"] == 3
    assert (out / "slab0.nii.gz").stat().st_mtime_ns == written  # a done volume is not recomputed
    assert len((out / "done.txt").read_text().split()) == 3
    mine, theirs = _labels(out), _labels(local_out)
    assert all(np.array_equal(mine[n], theirs[n]) for n in theirs) and sorted(mine) == sorted(theirs)
    assert _rows(out) == _rows(local_out)


@pytest.mark.slow
def test_a_bad_volume_is_reported_once_and_the_others_are_written(tmp_path):
    import medsamkit.cli.volume  # noqa: F401  (registers the verbs on `main`)
    from medsamkit.cli import main

    data = _slabs(tmp_path / "ct", bad=True, n=1)
    out = tmp_path / "seg"
    res = CliRunner().invoke(main, ["segment-volume", str(data), "-o", str(out), "--workers", "1"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken" in errors[0]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["slab0.nii.gz"]
    assert (out / "done.txt").read_text().split() == ["slab0"]


def test_the_one_volume_form_refuses_cluster_flags(tmp_path):
    import medsamkit.cli.volume  # noqa: F401  (registers the verbs on `main`)
    from medsamkit.cli import main

    res = CliRunner().invoke(main, ["segment-volume", "ct.nii.gz", "--label", "l.nii.gz", "--workers", "2",
                                    "-o", str(tmp_path / "o.nii.gz")])
    assert res.exit_code == 2 and "need a SPEC of many volumes and -o FOLDER" in res.output
