"""NIfTI / NRRD volumes: axis order, spacing, affine, round trips, grid checks and error messages."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from medsamkit.core.errors import InputError
from medsamkit.io.nifti_nrrd import read_nifti, read_nrrd, write_nifti, write_nrrd
from medsamkit.io.volume import Volume, check_same_grid
from medsamkit.io.volume_reader import read_label_volume, read_volume

# A sphere of radius 6 mm on a (z, y, x) = (3, 1, 0.5) mm grid, centred on voxel (10, 15, 20).
SHAPE_ZYX = (20, 30, 40)
SPACING_ZYX = (3.0, 1.0, 0.5)
CENTRE_ZYX = (10, 15, 20)
ORIGIN = np.array([-10.0, 20.0, 30.0])


def sphere_affine() -> np.ndarray:
    affine = np.diag([SPACING_ZYX[2], SPACING_ZYX[1], SPACING_ZYX[0], 1.0])
    affine[:3, 3] = ORIGIN
    return affine


def sphere_zyx(radius_mm: float = 6.0) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE_ZYX], indexing="ij")
    dist2 = sum(((idx - c) * s) ** 2 for idx, c, s in zip((z, y, x), CENTRE_ZYX, SPACING_ZYX))
    return (dist2 <= radius_mm**2).astype(np.uint8)


@pytest.fixture
def sphere_nifti(tmp_path: Path) -> Path:
    """Written with nibabel directly (x, y, z order on disk), not with our writer."""
    data = sphere_zyx().transpose(2, 1, 0).copy()
    data[35, 2, 1] = 7  # an asymmetric marker at x=35, y=2, z=1
    path = tmp_path / "sphere.nii.gz"
    nib.save(nib.Nifti1Image(data, sphere_affine()), str(path))
    return path


def test_read_nifti_axes_spacing_and_affine(sphere_nifti: Path) -> None:
    vol = read_nifti(sphere_nifti)
    assert vol.shape == SHAPE_ZYX
    assert vol.spacing == pytest.approx(SPACING_ZYX)
    np.testing.assert_allclose(vol.affine, sphere_affine())
    assert vol.array.dtype == np.uint8  # no scaling in the header: stored dtype kept
    assert vol.array[1, 2, 35] == 7
    assert vol.source == str(sphere_nifti)


def test_sphere_extent_follows_anisotropic_spacing(sphere_nifti: Path) -> None:
    sphere = read_nifti(sphere_nifti).array == 1
    # radius 6 mm: +/-2 slices of 3 mm, +/-6 rows of 1 mm, +/-12 columns of 0.5 mm through the centre
    cz, cy, cx = CENTRE_ZYX
    assert sphere[:, cy, cx].sum() == 5
    assert sphere[cz, :, cx].sum() == 13
    assert sphere[cz, cy, :].sum() == 25
    assert np.flatnonzero(sphere[:, cy, cx]).tolist() == [8, 9, 10, 11, 12]


@pytest.mark.parametrize("name", ["mask.nii", "mask.nii.gz", "sub/dir/mask.nii.gz"])
def test_write_nifti_round_trip_keeps_grid_and_labels(tmp_path: Path, sphere_nifti: Path, name: str) -> None:
    like = read_nifti(sphere_nifti)
    labels = sphere_zyx().astype(np.int64) * 3
    labels[0, 0, 0] = 2
    out = write_nifti(labels, tmp_path / name, like=like)
    back = read_nifti(out)
    assert back.array.dtype == np.uint8  # int64 labels are stored as the smallest integer type
    np.testing.assert_array_equal(back.array, labels)
    np.testing.assert_allclose(back.affine, like.affine, atol=1e-6)
    assert back.spacing == pytest.approx(SPACING_ZYX)
    header = nib.load(str(out)).header
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1


@pytest.mark.parametrize(
    ("array", "dtype", "stored"),
    [
        (np.ones(SHAPE_ZYX, bool), None, np.uint8),
        (np.full(SHAPE_ZYX, 300, np.int64), None, np.int16),
        (np.full(SHAPE_ZYX, 40000, np.int64), None, np.uint16),
        (np.full(SHAPE_ZYX, -1000.5, np.float64), None, np.float32),
        (np.ones(SHAPE_ZYX, bool), np.int32, np.int32),
    ],
)
def test_write_nifti_dtypes(tmp_path: Path, sphere_nifti: Path, array: np.ndarray, dtype, stored) -> None:
    like = read_nifti(sphere_nifti)
    back = read_nifti(write_nifti(array, tmp_path / "x.nii.gz", like=like, dtype=dtype))
    assert back.array.dtype == stored
    np.testing.assert_array_equal(back.array, array.astype(stored))


def test_write_nifti_rejects_wrong_shape(tmp_path: Path, sphere_nifti: Path) -> None:
    like = read_nifti(sphere_nifti)
    with pytest.raises(InputError, match=r"array shape \(20, 30, 39\) does not match the reference grid"):
        write_nifti(np.zeros((20, 30, 39), np.uint8), tmp_path / "bad.nii.gz", like=like)


def test_four_d_nifti_is_rejected_but_singleton_time_is_dropped(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.float32), np.eye(4)), str(tmp_path / "t2.nii"))
    with pytest.raises(InputError, match=r"t2.nii: expected a 3D volume, got shape \(4, 5, 6, 2\)"):
        read_nifti(tmp_path / "t2.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 1), np.float32), np.eye(4)), str(tmp_path / "t1.nii"))
    assert read_nifti(tmp_path / "t1.nii").shape == (6, 5, 4)


def test_corrupt_nifti_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"not a nifti at all")
    with pytest.raises(InputError, match=r"broken.nii.gz: cannot read NIfTI"):
        read_nifti(path)


def test_scaled_nifti_reads_as_float32(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.array([[[0, 10]]], dtype=np.int16), np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, str(tmp_path / "ct.nii"))
    vol = read_nifti(tmp_path / "ct.nii")
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array.ravel(), [-1024.0, -1004.0])


def test_read_lps_nrrd_gives_ras_affine(tmp_path: Path) -> None:
    data = np.zeros((4, 3, 2), np.int16)  # (x, y, z) on disk
    data[3, 1, 0] = 5
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.5, 1.0, 3.0]),
        "space origin": np.array([10.0, 20.0, 30.0]),
    }
    nrrd.write(str(tmp_path / "lps.nrrd"), data, header)
    vol = read_nrrd(tmp_path / "lps.nrrd")
    assert vol.shape == (2, 3, 4)
    assert vol.array[0, 1, 3] == 5
    assert vol.spacing == pytest.approx((3.0, 1.0, 0.5))
    expected = np.array(
        [[-0.5, 0, 0, -10.0], [0, -1.0, 0, -20.0], [0, 0, 3.0, 30.0], [0, 0, 0, 1.0]]
    )  # x and y rows negated: LPS -> RAS
    np.testing.assert_allclose(vol.affine, expected)


def test_nrrd_round_trip(tmp_path: Path, sphere_nifti: Path) -> None:
    like = read_nifti(sphere_nifti)
    out = write_nrrd(like.array, tmp_path / "sphere.nrrd", like=like)
    back = read_nrrd(out)
    np.testing.assert_array_equal(back.array, like.array)
    np.testing.assert_allclose(back.affine, like.affine)
    assert back.spacing == pytest.approx(SPACING_ZYX)
    assert nrrd.read_header(str(out))["space"] == "left-posterior-superior"


def test_vector_nrrd_is_rejected(tmp_path: Path) -> None:
    header = {"space": "RAS", "space directions": np.vstack([np.full(3, np.nan), np.eye(3)])}
    header["kinds"] = ["vector", "domain", "domain", "domain"]
    nrrd.write(str(tmp_path / "vec.nrrd"), np.zeros((3, 4, 4, 4), np.float32), header)
    with pytest.raises(InputError, match=r"vec.nrrd: non-spatial axis 0 of size 3"):
        read_nrrd(tmp_path / "vec.nrrd")


def test_read_volume_dispatches_on_suffix(tmp_path: Path, sphere_nifti: Path) -> None:
    like = read_nifti(sphere_nifti)
    write_nrrd(like.array, tmp_path / "s.nrrd", like=like)
    write_nifti(like.array, tmp_path / "s.nii", like=like)
    for name in ("s.nrrd", "s.nii"):
        vol = read_volume(tmp_path / name)
        np.testing.assert_array_equal(vol.array, like.array)
    assert read_volume(sphere_nifti).meta["format"] == "nifti"
    assert read_volume(tmp_path / "s.nrrd").meta["format"] == "nrrd"


def test_read_volume_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing.nii.gz: file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "scan.mha").write_bytes(b"x")
    with pytest.raises(InputError, match=r"scan.mha: unsupported volume format .mha"):
        read_volume(tmp_path / "scan.mha")
    with pytest.raises(InputError, match=r"no DICOM image files"):
        read_volume(tmp_path)  # a folder is a DICOM series; this one only has scan.mha


def grid(shape=(2, 3, 4), shift: float = 0.0, source: str = "img.nii.gz") -> Volume:
    affine = np.eye(4)
    affine[0, 3] = shift
    return Volume(np.zeros(shape, np.uint8), (1.0, 1.0, 1.0), affine, source)


def test_check_same_grid_names_both_files() -> None:
    check_same_grid(grid(shift=1e-5, source="lab.nii.gz"), grid())  # header round-off is fine
    with pytest.raises(
        InputError, match=r"lab.nii.gz: label shape \(2, 3, 5\) does not match .* of img.nii.gz"
    ):
        check_same_grid(grid((2, 3, 5), source="lab.nii.gz"), grid())
    with pytest.raises(
        InputError, match=r"lab.nii.gz: label affine differs from the affine of img.nii.gz by"
    ):
        check_same_grid(grid(shift=0.5, source="lab.nii.gz"), grid())


def test_read_label_volume(tmp_path: Path, sphere_nifti: Path) -> None:
    image = read_nifti(sphere_nifti)
    nib.save(
        nib.Nifti1Image(sphere_zyx().transpose(2, 1, 0).astype(np.float32) * 2, sphere_affine()),
        str(tmp_path / "lab.nii.gz"),
    )
    label = read_label_volume(tmp_path / "lab.nii.gz", image)
    assert label.array.dtype == np.uint8 and set(np.unique(label.array)) == {0, 2}
    moved = sphere_affine()
    moved[2, 3] += 3.0  # one slice off
    nib.save(nib.Nifti1Image(sphere_zyx().transpose(2, 1, 0), moved), str(tmp_path / "off.nii.gz"))
    with pytest.raises(InputError, match=r"off.nii.gz: label affine differs .*sphere.nii.gz by up to 3 mm"):
        read_label_volume(tmp_path / "off.nii.gz", image)
    nib.save(
        nib.Nifti1Image(np.full((40, 30, 20), 0.5, np.float32), sphere_affine()), str(tmp_path / "p.nii")
    )
    with pytest.raises(InputError, match=r"p.nii: label map has non-integer values"):
        read_label_volume(tmp_path / "p.nii", image)
