"""3D engine: slice inputs, volumetric scores with known geometry, slice-wise / propagated LiteMedSAM on real CT."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medsamkit.core.errors import InputError
from medsamkit.io.nifti_nrrd import read_nifti, write_nifti
from medsamkit.io.volume import Volume
from medsamkit.io.windowing import parse_window
from medsamkit.predictor import Predictor
from medsamkit.prompts import Prompt, tight_box
from medsamkit.volumes import (
    EvaluateVolumeConfig,
    SegmentVolumeConfig,
    SliceEmbedder,
    evaluate_volumes,
    run_segment_volume,
    segment_volume,
    slice_input,
)
from medsamkit.volumes.masks import mask_file_name
from medsamkit.volumes.propagate import largest_slice, parse_box_slice, propagate_from
from medsamkit.volumes.scores import slice_rows, volume_scores
from medsamkit.volumes.variants import variants

needs_lung = pytest.mark.skipif(importlib.util.find_spec("cerr") is None,
                                reason="pycerr (builtin:lung-gtv data) not installed")


def _cuboid(shape=(10, 12, 12), z=(3, 6), yx=(3, 8)) -> np.ndarray:
    """Boolean cuboid: slices z[0]..z[1], rows and columns yx[0]..yx[1] (inclusive)."""
    m = np.zeros(shape, dtype=bool)
    m[z[0]: z[1] + 1, yx[0]: yx[1] + 1, yx[0]: yx[1] + 1] = True
    return m


def _sphere(shape=(15, 41, 41), spacing=(3.0, 1.0, 1.0), radius_mm=12.0, centre_shift_mm=0.0) -> np.ndarray:
    zz, yy, xx = np.indices(shape).astype(float)
    c = (np.array(shape) - 1) / 2
    d2 = (((zz - c[0]) * spacing[0] - centre_shift_mm) ** 2 + ((yy - c[1]) * spacing[1]) ** 2
          + ((xx - c[2]) * spacing[2]) ** 2)
    return d2 <= radius_mm**2


# --- pure geometry ----------------------------------------------------------------------------------


def test_three_slice_channels_are_the_neighbouring_slices() -> None:
    vol = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None] / 10, (5, 4, 6)).copy()
    for z, expected in [(0, (0, 0, 1)), (2, (1, 2, 3)), (4, (3, 4, 4))]:
        x = slice_input(vol, z, three_slice=True)
        assert x.shape == (4, 6, 3)
        assert x[0, 0].tolist() == pytest.approx([e / 10 for e in expected])
    assert slice_input(vol, 3).shape == (4, 6)
    assert float(slice_input(vol, 3)[1, 1]) == pytest.approx(0.3)
    with pytest.raises(InputError, match="slice 5 is outside the volume"):
        slice_input(vol, 5)


def test_sphere_against_itself_with_anisotropic_spacing() -> None:
    s = _sphere()
    row = volume_scores(s, s, (3.0, 1.0, 1.0), tolerances_mm=(0.5, 1.0))
    assert row["dice"] == 1.0 and row["nsd_0.5mm"] == 1.0 and row["nsd_1mm"] == 1.0 and row["hd95_mm"] == 0.0
    assert row["fp_slices"] == 0 and row["truth_slices"] == row["pred_slices"] == 9  # centre on a voxel: |dz| <= 12 mm is 4 slices each way


def test_shifted_sphere_nsd_reaches_one_at_the_shift() -> None:
    # A translation by d moves every surface voxel onto the other surface: all distances <= |d| = 3 mm.
    a, b = _sphere(), _sphere(centre_shift_mm=3.0)
    row = volume_scores(b, a, (3.0, 1.0, 1.0), tolerances_mm=(2.9, 3.0))
    assert row["nsd_3mm"] == 1.0
    assert row["nsd_2.9mm"] < 1.0
    assert row["hd95_mm"] <= 3.0
    assert 0.5 < row["dice"] < 1.0


def test_cuboid_shifted_one_slice_by_hand() -> None:
    # 6x6 squares on slices 3..6 vs 4..7 (3 mm slices, 1 mm pixels). Overlap 3 of 4 slices: Dice 3/4.
    # Each surface has 2 faces of 36 + 2 rings of 20 = 112 points; 60 lie on the other surface (0 mm),
    # 12 inner-top points are 1 mm from the other's ring, 4 are 2 mm, the 36 of the far face 3 mm.
    a, b = _cuboid(), _cuboid(z=(4, 7))
    row = volume_scores(b, a, (3.0, 1.0, 1.0), tolerances_mm=(0.5, 1.0, 2.0, 3.0))
    assert row["dice"] == pytest.approx(0.75)
    assert row["nsd_0.5mm"] == pytest.approx(60 / 112)
    assert row["nsd_1mm"] == pytest.approx(72 / 112)
    assert row["nsd_2mm"] == pytest.approx(76 / 112)
    assert row["nsd_3mm"] == 1.0
    assert row["hd95_mm"] == pytest.approx(3.0)


def test_false_positives_on_empty_slices_count() -> None:
    truth = _cuboid()  # 4 slices x 36 = 144 voxels
    pred = truth.copy()
    pred[8, 0, :10] = True  # 10 voxels on a slice without truth
    row = volume_scores(pred, truth, (3.0, 1.0, 1.0))
    assert row["dice"] == pytest.approx(288 / 298)
    assert row["fp_slices"] == 1 and row["pred_slices"] == 5 and row["truth_slices"] == 4
    rows = slice_rows(pred, truth)
    assert [r["z"] for r in rows] == [3, 4, 5, 6, 8]
    assert rows[-1] == {"z": 8, "truth_px": 0, "pred_px": 10, "dice": 0.0}
    assert volume_scores(np.zeros_like(truth), truth, (3.0, 1.0, 1.0))["dice"] == 0.0


@pytest.mark.parametrize("text, expected", [
    ("12,10,20,30,40", (12, 10.0, 20.0, 30.0, 40.0)),
    ("0,1.5,2,3,4", (0, 1.5, 2.0, 3.0, 4.0)),
])
def test_parse_box_slice(text: str, expected: tuple) -> None:
    assert parse_box_slice(text) == expected


@pytest.mark.parametrize("text", ["1,2,3,4", "a,1,2,3,4", "1.5,1,2,3,4"])
def test_parse_box_slice_rejects(text: str) -> None:
    with pytest.raises(InputError, match="must be z,x0,y0,x1,y1"):
        parse_box_slice(text)


@pytest.mark.parametrize("text, expected", [
    (None, None), ("lung", "lung"), ("-1000,400", (-1000.0, 400.0)), (" bone ", "bone"),
])
def test_parse_window(text, expected) -> None:
    assert parse_window(text) == expected
    with pytest.raises(InputError, match="upper bound must exceed"):
        parse_window("400,-1000")


def test_variant_names_and_largest_slice() -> None:
    names = [v.name for v in variants("box,box+5", [False, True], [False, True])]
    assert names == ["box", "box+5", "propagate:box", "propagate:box+5",
                     "box/3slice", "box+5/3slice", "propagate:box/3slice", "propagate:box+5/3slice"]
    assert [v.name for v in variants("box", [False, True], True, 0.8)] == ["box/3slice",
                                                                          "propagate:box@iou0.8/3slice"]
    m = np.zeros((4, 3, 3), dtype=bool)
    m[1, 0, 0] = True
    m[2, :2, :2] = True
    assert largest_slice(m) == 2
    with pytest.raises(InputError, match="class is empty"):
        largest_slice(np.zeros((2, 2, 2), dtype=bool))


def test_bad_requests_fail_before_any_encoder_pass(litemedsam) -> None:
    predictor = Predictor(litemedsam)
    img = np.zeros((3, 16, 16), dtype=np.float32)
    with pytest.raises(InputError, match="give a label volume or a box slice"):
        segment_volume(predictor, img)
    with pytest.raises(InputError, match="iter5 is interactive"):
        segment_volume(predictor, img, np.zeros((3, 16, 16), np.uint8), prompts="iter5")
    with pytest.raises(InputError, match="box slice 3 is outside the volume"):
        segment_volume(predictor, img, box_slice=(3, 1, 1, 4, 4))
    with pytest.raises(InputError, match=r"must satisfy 0 <= x0 <= x1 < 16"):
        segment_volume(predictor, img, box_slice=(1, 1, 1, 16, 4))
    with pytest.raises(InputError, match=r"label shape \(3, 16, 15\) does not match"):
        segment_volume(predictor, img, np.zeros((3, 16, 15), np.uint8))


# --- synthetic volume through the model and NIfTI -------------------------------------------------------


@pytest.fixture(scope="module")
def squares_nifti(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """A 3-slice 64x64 volume with two bright squares labelled 2 and 5, on a rotated anisotropic grid."""
    folder = tmp_path_factory.mktemp("squares")
    img = np.full((3, 64, 64), 100.0, dtype=np.float32)
    lab = np.zeros((3, 64, 64), dtype=np.uint8)
    img[:, 8:28, 10:30] = 900.0
    lab[:, 8:28, 10:30] = 2
    img[:, 36:56, 34:54] = 600.0
    lab[:, 36:56, 34:54] = 5
    angle = np.deg2rad(20)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                               [0, 0, 1]]) @ np.diag([0.8, 0.8, 2.5])
    affine[:3, 3] = [-12.0, 30.5, 7.25]
    like = Volume(img, (2.5, 0.8, 0.8), affine, "squares")
    write_nifti(img, folder / "img.nii.gz", like=like, dtype=np.float32)
    write_nifti(lab, folder / "lab.nii.gz", like=like)
    return folder / "img.nii.gz", folder / "lab.nii.gz", affine


def test_segment_volume_nifti_keeps_grid_and_class_values(litemedsam, squares_nifti, tmp_path: Path) -> None:
    img_path, lab_path, affine = squares_nifti
    out = tmp_path / "pred.nii.gz"
    summary = run_segment_volume(SegmentVolumeConfig(volume=str(img_path), out=str(out), label=str(lab_path),
                                                     window="0,1000", show_progress=False), Predictor(litemedsam))
    back = read_nifti(out)
    assert back.shape == (3, 64, 64)
    assert np.allclose(back.affine, affine, atol=1e-5)
    assert np.allclose(nib.load(str(out)).affine, nib.load(str(img_path)).affine, atol=1e-5)
    assert set(np.unique(back.array).tolist()) == {0, 2, 5}
    assert summary["encoded_slices"] == 3
    lab = read_nifti(lab_path).array
    for v in (2, 5):
        assert summary["classes"][str(v)]["dice"] >= 0.8, summary
        assert volume_scores(back.array == v, lab == v, back.spacing)["dice"] >= 0.8


def test_evaluate_volumes_writes_csvs_masks_and_resumes(litemedsam, squares_nifti, tmp_path: Path) -> None:
    img_path, lab_path, affine = squares_nifti
    cfg = EvaluateVolumeConfig(data=f"{img_path}::{lab_path}", out=str(tmp_path), prompts="box", window="0,1000",
                               save_masks=True, show_progress=False)
    summary = evaluate_volumes(cfg, Predictor(litemedsam))
    rows = list(csv.DictReader((tmp_path / "per_volume.csv").open()))
    assert [(r["volume"], r["variant"], r["class"]) for r in rows] == [("img", "box", "2"), ("img", "box", "5")]
    assert all(float(r["dice"]) >= 0.8 and r["embedded_slices"] for r in rows)
    slices = list(csv.DictReader((tmp_path / "per_slice.csv").open()))
    assert sorted((r["class"], r["z"]) for r in slices) == [(c, z) for c in "25" for z in "012"]
    mask = read_nifti(tmp_path / "masks" / "box" / "img.nii.gz")
    assert np.allclose(mask.affine, affine, atol=1e-5) and set(np.unique(mask.array).tolist()) == {0, 2, 5}
    assert summary["results"]["box|class 2"]["dice"]["n"] == 1
    # A rerun finds both rows and encodes nothing: the files stay as they were.
    before = (tmp_path / "per_volume.csv").read_text(), (tmp_path / "per_slice.csv").read_text()
    evaluate_volumes(cfg, Predictor(litemedsam))
    assert ((tmp_path / "per_volume.csv").read_text(), (tmp_path / "per_slice.csv").read_text()) == before
    # Rows made with other settings are never mixed into the same folder.
    cfg.min_area = 5
    with pytest.raises(InputError, match=r"holds results of a different configuration \(min_area differ\)"):
        evaluate_volumes(cfg, Predictor(litemedsam))


def test_cli_evaluate_volume_scores_given_predictions(squares_nifti, tmp_path: Path) -> None:
    import medsamkit.cli.volume  # noqa: F401  (registers the verbs on `main`)
    from medsamkit.cli import main

    img_path, lab_path, _ = squares_nifti
    res = CliRunner().invoke(main, ["evaluate-volume", "--data", f"{img_path}::{lab_path}", "--predictions",
                                    str(lab_path), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "| predictions | 2 | 1 | 1.000 (1.000)" in res.output
    rows = list(csv.DictReader((tmp_path / "per_volume.csv").open()))
    assert [float(r["dice"]) for r in rows] == [1.0, 1.0]


def test_cli_segment_volume_errors_are_one_line(squares_nifti, tmp_path: Path) -> None:
    import medsamkit.cli.volume  # noqa: F401  (registers the verbs on `main`)
    from medsamkit.cli import main

    img_path, _, _ = squares_nifti
    res = CliRunner().invoke(main, ["segment-volume", str(img_path), "-o", str(tmp_path / "o.nii.gz")])
    assert res.exit_code == 2
    assert "give --label LABEL, --box-slice" in res.output and "--box3d" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(main, ["segment-volume", str(img_path), "--box3d", "1,2,3", "-o",
                                    str(tmp_path / "o.nii.gz")])
    assert res.exit_code == 2 and "must be z_min,z_max,z,x0,y0,x1,y1" in res.output
    res = CliRunner().invoke(main, ["segment-volume", str(img_path), "--box-slice", "1,2,3", "-o",
                                    str(tmp_path / "o.nii.gz")])
    assert res.exit_code == 2 and "must be z,x0,y0,x1,y1" in res.output
    res = CliRunner().invoke(main, ["segment-volume", str(img_path), "--box-slice", "1,2,3,4,5", "-o",
                                    str(tmp_path / "o.png")])
    assert res.exit_code == 2 and "must be a NIfTI file" in res.output


# --- real lung CT ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lung_crop(litemedsam):
    """pat_3 of builtin:lung-gtv (GTV on slices 17..28) cropped to slices 14..31, with a shared embedder."""
    if importlib.util.find_spec("cerr") is None:
        pytest.skip("pycerr (builtin:lung-gtv data) not installed")
    from medsamkit.io.builtin import load_lung_volume, lung_patients

    case = load_lung_volume(lung_patients()[2])
    image, label = case.image[14:32], case.label[14:32]
    return image, label, case.spacing, SliceEmbedder(Predictor(litemedsam), image, False, "pat_3")


@needs_lung
def test_slicewise_box_on_real_lung_volume(lung_crop) -> None:
    image, label, spacing, embedder = lung_crop
    before = len(embedder.visits)
    pred = segment_volume(embedder, image, label, prompts="box", source="pat_3")
    assert set(np.unique(pred).tolist()) <= {0, 1}
    labelled = set(np.flatnonzero(label.any((1, 2))).tolist())
    assert set(embedder.visits[before:]) == labelled  # only labelled slices are encoded
    row = volume_scores(pred, label, spacing)
    assert row["dice"] >= 0.6, row
    assert row["fp_slices"] == 0  # slice-wise never prompts a slice without truth


@needs_lung
def test_propagation_stops_where_the_mask_vanishes(lung_crop) -> None:
    image, label, spacing, embedder = lung_crop
    before = len(embedder.visits)
    pred = segment_volume(embedder, image, label, prompts="box", propagate=True, source="pat_3")
    visits = embedder.visits[before:]
    start = largest_slice(label > 0)
    zs = np.flatnonzero(pred.any((1, 2)))
    assert start in zs and visits[0] == start
    assert np.array_equal(zs, np.arange(zs[0], zs[-1] + 1))  # one contiguous run through the start slice
    # Up from the start, then down; each direction ends one slice past the run (the mask vanished there)
    # or at the volume's end, and nothing beyond is visited.
    up = list(range(start + 1, min(zs[-1] + 2, len(image))))
    down = list(range(start - 1, max(zs[0] - 2, -1), -1))
    assert visits == [start, *up, *down]
    assert all(not pred[z].any() for z in (zs[0] - 1, zs[-1] + 1) if 0 <= z < len(image))
    # The trace says why each direction ended: the first slice not kept is below 20 px or off the volume.
    trace: list = []
    again = propagate_from(embedder, start, Prompt(box=tight_box(label[start] > 0)), 20, 0.0, 0.0, trace)
    assert np.array_equal(again, pred > 0)
    assert [t[0] for t in trace] == visits
    assert all(t[3] == (t[1] >= 20) for t in trace)
    assert [t[0] for t in trace if not t[3]] == [z for z in (zs[-1] + 1, zs[0] - 1) if 0 <= z < len(image)]
    # A predicted-IoU floor above any the model gives stops at the start slice: nothing is kept.
    trace = []
    none = propagate_from(embedder, start, Prompt(box=tight_box(label[start] > 0)), 20, 0.0, 1.01, trace)
    assert not none.any() and len(trace) == 1 and trace[0][3] is False
    assert volume_scores(pred, label, spacing)["dice"] > 0.2


@needs_lung
def test_dicom_rtstruct_to_nifti_to_evaluate_is_exact(tmp_path: Path) -> None:
    from medsamkit.io.builtin import lung_patients
    from medsamkit.volumes import open_volume_dataset

    folder = lung_patients()[1]
    case = next(open_volume_dataset(str(folder)).items())  # DICOM CT series + its RTSTRUCT
    assert case.label.max() >= 1
    label_nii = write_nifti(case.label, tmp_path / "label.nii.gz", like=case.meta["volume"])
    assert np.allclose(read_nifti(label_nii).affine, case.meta["volume"].affine, atol=1e-4)  # float32 header
    out = tmp_path / "eval"
    summary = evaluate_volumes(EvaluateVolumeConfig(data=str(folder), out=str(out), predictions=str(label_nii),
                                                    show_progress=False))
    rows = list(csv.DictReader((out / "per_volume.csv").open()))
    assert len(rows) == len(np.unique(case.label)) - 1
    for row in rows:
        assert float(row["dice"]) == 1.0 and float(row["nsd_1mm"]) == 1.0 and float(row["hd95_mm"]) == 0.0
    assert summary["volumes"] == 1
    assert json.loads((out / "summary.json").read_text())["results"]
    assert "| predictions |" in (out / "summary.md").read_text()
    assert mask_file_name("lung-gtv/pat_2") == "lung-gtv_pat_2.nii.gz"
