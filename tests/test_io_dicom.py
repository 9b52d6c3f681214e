"""DICOM series, RTSTRUCT and SEG reading: synthetic files of known geometry, and real lung CT from pycerr."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from medsamkit.core.errors import InputError
from medsamkit.io.dicom import list_dicom_series, read_dicom_seg, read_dicom_series, read_rtstruct
from medsamkit.io.nifti_nrrd import read_nifti, write_nifti
from medsamkit.io.volume_reader import read_volume

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
ROWS, COLS = 4, 5


def save(ds: Dataset, path: Path, sop_class: str) -> Path:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = b"\0" * 128
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_slice(
    path: Path,
    position: tuple[float, float, float],
    series_uid: str,
    pixels: np.ndarray,
    orientation: tuple[float, ...] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.8, 0.6),
    slope: float = 2.0,
    intercept: float = -1024.0,
) -> Path:
    ds = Dataset()
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.3.4"
    ds.FrameOfReferenceUID = "1.2.3.5"
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = 3.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return save(ds, path, CTImageStorage)


def ramp(base: int, shape: tuple[int, int] = (ROWS, COLS)) -> np.ndarray:
    """Stored value = base + row * columns + column, so every pixel says where it came from."""
    return base + np.arange(shape[0] * shape[1]).reshape(shape)


def axial_series(folder: Path, z_mm: list[float], uid: str | None = None, **kwargs) -> str:
    """One file per z, named in the order given (so a shuffled list gives shuffled files)."""
    uid = uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(z_mm):
        ct_slice(folder / f"IMG{i:03d}.dcm", (-100.0, -50.0, z), uid, ramp(int(10 * z)), **kwargs)
    return uid


def test_shuffled_files_are_sorted_along_the_normal(tmp_path: Path) -> None:
    uid = axial_series(tmp_path, [6.0, 0.0, 3.0])
    vol = read_dicom_series(tmp_path)
    assert vol.shape == (3, ROWS, COLS)
    assert vol.array.dtype == np.float32
    # HU = stored * 2 - 1024; stored = 10 * z + row * 5 + col
    np.testing.assert_array_equal(vol.array[:, 0, 0], [-1024.0, -964.0, -904.0])
    assert vol.array[0, 1, 2] == 7 * 2 - 1024
    assert vol.spacing == pytest.approx((3.0, 0.8, 0.6))
    expected = np.array([[-0.6, 0, 0, 100.0], [0, -0.8, 0, 50.0], [0, 0, 3.0, 0.0], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(vol.affine, expected)
    assert vol.meta["SeriesInstanceUID"] == uid
    assert [Path(f).name for f in vol.meta["files"]] == ["IMG001.dcm", "IMG002.dcm", "IMG000.dcm"]
    assert [p[2] for p in vol.meta["ImagePositionPatient"]] == [0.0, 3.0, 6.0]


def test_coronal_series_is_sorted_by_y(tmp_path: Path) -> None:
    # rows along +x, columns along -z (feet): normal = (1,0,0) x (0,0,-1) = (0, 1, 0), i.e. posterior
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    uid = generate_uid()
    for i, y in enumerate([10.0, 0.0, 5.0]):
        ct_slice(tmp_path / f"c{i}.dcm", (-100.0, y, 50.0), uid, ramp(int(y)), orientation=coronal)
    vol = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.array[:, 0, 0], [-1024.0, -1014.0, -1004.0])
    expected = np.array([[-0.6, 0, 0, 100.0], [0, 0, -5.0, 0.0], [0, -0.8, 0, 50.0], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(vol.affine, expected)
    assert vol.spacing == pytest.approx((5.0, 0.8, 0.6))


@pytest.mark.parametrize(
    ("z_mm", "message"),
    [
        (
            [0.0, 3.0, 9.0, 12.0],
            r"missing slices .* gap of 6.00 mm between 3.00 and 9.00 mm \(median step 3.00",
        ),
        ([0.0, 3.0, 6.0, 10.0, 13.0], r"mixed slice spacing .* step of 4.000 mm after 6.00 mm"),
        ([0.0, 3.0, 3.0, 6.0], r"two slices .* at the same position 3.00 mm"),
    ],
)
def test_inconsistent_slice_positions(tmp_path: Path, z_mm: list[float], message: str) -> None:
    axial_series(tmp_path, z_mm)
    with pytest.raises(InputError, match=message):
        read_dicom_series(tmp_path)


def test_mixed_pixel_spacing_orientation_and_size(tmp_path: Path) -> None:
    uid = axial_series(tmp_path / "spacing", [0.0, 3.0])
    ct_slice(tmp_path / "spacing" / "odd.dcm", (-100.0, -50.0, 6.0), uid, ramp(0), pixel_spacing=(0.7, 0.6))
    with pytest.raises(InputError, match=r"mixed pixel spacing in series .* odd.dcm \[0.7, 0.6\]"):
        read_dicom_series(tmp_path / "spacing")

    uid = axial_series(tmp_path / "orient", [0.0, 3.0])
    ct_slice(
        tmp_path / "orient" / "odd.dcm", (-100.0, -50.0, 6.0), uid, ramp(0), orientation=(0, 1, 0, 0, 0, -1)
    )
    with pytest.raises(InputError, match=r"mixed image orientation in series .* odd.dcm"):
        read_dicom_series(tmp_path / "orient")

    uid = axial_series(tmp_path / "size", [0.0, 3.0])
    ct_slice(tmp_path / "size" / "odd.dcm", (-100.0, -50.0, 6.0), uid, ramp(0, (4, 6)))
    with pytest.raises(InputError, match=r"mixed image size in series .* odd.dcm \(4, 6\)"):
        read_dicom_series(tmp_path / "size")


def test_several_series_are_named_and_can_be_chosen(tmp_path: Path) -> None:
    first = axial_series(tmp_path, [0.0, 3.0, 6.0], uid="1.2.3.100")
    for i, z in enumerate([0.0, 5.0]):
        ct_slice(tmp_path / f"other{i}.dcm", (-100.0, -50.0, z), "1.2.3.200", ramp(0))
    with pytest.raises(
        InputError, match=r"2 image series found: 1.2.3.100 \(CT, 3 files\), 1.2.3.200 \(CT, 2 files\)"
    ):
        read_dicom_series(tmp_path)
    assert read_dicom_series(tmp_path, series_uid=first).shape == (3, ROWS, COLS)
    assert read_dicom_series(tmp_path, series_uid="1.2.3.200").spacing[0] == pytest.approx(5.0)
    with pytest.raises(InputError, match=r"no image series 9.9.9"):
        read_dicom_series(tmp_path, series_uid="9.9.9")
    # one file stands for its series
    assert read_volume(tmp_path / "other1.dcm").meta["SeriesInstanceUID"] == "1.2.3.200"


def test_unreadable_empty_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no DICOM image files found"):
        read_dicom_series(tmp_path)
    axial_series(tmp_path, [0.0, 3.0])
    (tmp_path / "README.txt").write_text("not DICOM, skipped")
    assert read_dicom_series(tmp_path).shape == (2, ROWS, COLS)
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(InputError, match=r"broken.dcm: unreadable DICOM file"):
        read_dicom_series(tmp_path)
    with pytest.raises(InputError, match=r"not a folder"):
        read_dicom_series(tmp_path / "nope")


# --- RTSTRUCT ---------------------------------------------------------------------------------------
# Grid for contour tests: 1 mm pixels, first pixel centre at the origin, slices at z = 0, 2, 4 mm,
# so voxel (col, row) == LPS (x, y) in mm.


def square(lo: float, hi: float, z: float) -> np.ndarray:
    return np.array([[lo, lo, z], [hi, lo, z], [hi, hi, z], [lo, hi, z]])


def rtstruct(path: Path, series_uid: str | None, rois: dict[str, list[np.ndarray]]) -> Path:
    ds = Dataset()
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    if series_uid is not None:
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        study = Dataset()
        study.RTReferencedSeriesSequence = Sequence([series])
        frame = Dataset()
        frame.FrameOfReferenceUID = "1.2.3.5"
        frame.RTReferencedStudySequence = Sequence([study])
        ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        ds.StructureSetROISequence.append(roi)
        if not contours:
            continue  # declared, never drawn
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ContourSequence = Sequence()
        for points in contours:
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [float(v) for v in points.ravel()]
            roi_contour.ContourSequence.append(contour)
        ds.ROIContourSequence.append(roi_contour)
    return save(ds, path, RTStructureSetStorage)


@pytest.fixture
def grid_series(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "ct"
    folder.mkdir()
    uid = generate_uid()
    for i, z in enumerate([4.0, 0.0, 2.0]):
        ct_slice(folder / f"s{i}.dcm", (0.0, 0.0, z), uid, np.zeros((8, 8)), pixel_spacing=(1.0, 1.0))
    return folder, uid


def test_rtstruct_square_with_hole(grid_series: tuple[Path, str], tmp_path: Path) -> None:
    folder, uid = grid_series
    rois = {
        # outer square covers pixel centres 1..4 (16 px); the hole covers 2..3 (4 px): XOR leaves 12
        "ring": [square(0.5, 4.5, 2.0), square(1.5, 3.5, 2.0)],
        # z = 4.9 mm is 0.45 slice steps from the slice at 4 mm: it belongs there; x 4.5..6.5 mm and
        # y 0.5..1.5 mm cover columns 5-6 of row 1
        "near": [np.array([[4.5, 0.5, 4.9], [6.5, 0.5, 4.9], [6.5, 1.5, 4.9], [4.5, 1.5, 4.9]])],
        "empty": [],
    }
    rtstruct(folder / "RS.dcm", uid, rois)  # in the series folder: must not disturb series reading
    reference = read_dicom_series(folder)
    masks = read_rtstruct(folder / "RS.dcm", reference)
    assert set(masks) == {"ring", "near", "empty"}
    ring = masks["ring"]
    assert ring.shape == (3, 8, 8) and ring.dtype == bool
    assert ring[1].sum() == 12 and ring[0].sum() == 0 and ring[2].sum() == 0
    assert ring[1, 1, 1] and ring[1, 4, 4] and not ring[1, 2, 2] and not ring[1, 3, 3] and not ring[1, 0, 0]
    near = masks["near"]
    assert near[2].sum() == 2 and near[2, 1, 5] and near[2, 1, 6]
    assert not masks["empty"].any()


def test_rtstruct_include_boundary_adds_touched_pixels(grid_series: tuple[Path, str]) -> None:
    folder, uid = grid_series
    rtstruct(folder / "RS.dcm", uid, {"sq": [square(0.4, 4.4, 0.0)]})
    reference = read_dicom_series(folder)
    # centres inside: 1..4 (16 px); the line itself runs through pixels 0 and 4: 0..4 (25 px)
    assert read_rtstruct(folder / "RS.dcm", reference)["sq"][0].sum() == 16
    assert read_rtstruct(folder / "RS.dcm", reference, include_boundary=True)["sq"][0].sum() == 25


@pytest.mark.parametrize(
    ("points", "message"),
    [
        (square(1.5, 3.5, 5.5), r"contour of ROI 'bad' at z=5.50 mm lies on no slice of"),
        (square(1.5, 3.5, -1.5), r"contour of ROI 'bad' at z=-1.50 mm lies on no slice of"),
        (np.array([[0, 0, 0.0], [0, 3, 0.0], [0, 3, 4.0]]), r"is not parallel to the slices"),
    ],
)
def test_rtstruct_contour_off_the_grid(
    grid_series: tuple[Path, str], points: np.ndarray, message: str
) -> None:
    folder, uid = grid_series
    rtstruct(folder / "RS.dcm", uid, {"bad": [points]})
    with pytest.raises(InputError, match=message):
        read_rtstruct(folder / "RS.dcm", read_dicom_series(folder))


def test_rtstruct_for_another_series_is_rejected(grid_series: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = grid_series
    rtstruct(tmp_path / "RS.dcm", "9.8.7", {"sq": [square(0.5, 4.5, 2.0)]})
    with pytest.raises(
        InputError, match=r"RS.dcm: RTSTRUCT refers to series 9.8.7, not to series .* of .*ct"
    ):
        read_rtstruct(tmp_path / "RS.dcm", read_dicom_series(folder))
    # no reference recorded: geometry alone decides
    rtstruct(tmp_path / "RS2.dcm", None, {"sq": [square(0.5, 4.5, 2.0)]})
    assert read_rtstruct(tmp_path / "RS2.dcm", read_dicom_series(folder))["sq"].sum() == 16
    with pytest.raises(InputError, match=r"s0.dcm: not an RTSTRUCT file \(Modality CT\)"):
        read_rtstruct(folder / "s0.dcm", read_dicom_series(folder))


# --- SEG ------------------------------------------------------------------------------------------


def seg_file(
    path: Path,
    series_uid: str,
    frames: list[tuple[int, float, np.ndarray]],
    fractional: bool = False,
    in_plane: tuple[float, float] = (0.0, 0.0),
) -> Path:
    """frames: (segment number, z in mm, 8x8 frame) on the `grid_series` geometry."""
    ds = Dataset()
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = generate_uid()
    ref = Dataset()
    ref.SeriesInstanceUID = series_uid
    ds.ReferencedSeriesSequence = Sequence([ref])
    ds.SegmentSequence = Sequence()
    for number, label in [(1, "liver"), (2, "tumour")]:
        segment = Dataset()
        segment.SegmentNumber, segment.SegmentLabel = number, label
        ds.SegmentSequence.append(segment)
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = list(AXIAL)
    measures.PixelSpacing, measures.SliceThickness = [1.0, 1.0], 2.0
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence()
    for number, z, _ in frames:
        ident, position, item = Dataset(), Dataset(), Dataset()
        ident.ReferencedSegmentNumber = number
        position.ImagePositionPatient = [in_plane[0], in_plane[1], z]
        item.SegmentIdentificationSequence = Sequence([ident])
        item.PlanePositionSequence = Sequence([position])
        ds.PerFrameFunctionalGroupsSequence.append(item)
    stack = np.stack([f for _, _, f in frames])
    ds.Rows, ds.Columns = stack.shape[1:]
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    if fractional:
        ds.SegmentationType = "FRACTIONAL"
        ds.MaximumFractionalValue = 255
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = stack.astype(np.uint8).tobytes()
    else:
        ds.SegmentationType = "BINARY"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
        ds.PixelData = pack_bits(stack.astype(np.uint8))
    return save(ds, path, SEG_STORAGE)


def block(r0: int, r1: int, c0: int, c1: int, value: int = 1) -> np.ndarray:
    frame = np.zeros((8, 8), np.uint8)
    frame[r0:r1, c0:c1] = value
    return frame


def test_binary_seg_frames_land_on_their_slices(grid_series: tuple[Path, str]) -> None:
    folder, uid = grid_series
    frames = [(1, 4.0, block(0, 2, 0, 3)), (2, 2.0, block(5, 8, 5, 8)), (1, 0.0, block(3, 4, 3, 4))]
    seg_file(folder / "SEG.dcm", uid, frames)
    reference = read_dicom_series(folder)  # the SEG beside the images is ignored
    masks = read_dicom_seg(folder / "SEG.dcm", reference)
    assert set(masks) == {"liver", "tumour"}
    assert masks["liver"].sum(axis=(1, 2)).tolist() == [1, 0, 6]
    assert masks["tumour"].sum(axis=(1, 2)).tolist() == [0, 9, 0]
    assert masks["liver"][2, 1, 2] and masks["liver"][0, 3, 3] and masks["tumour"][1, 7, 7]


def test_fractional_seg_is_thresholded_at_half(grid_series: tuple[Path, str]) -> None:
    folder, uid = grid_series
    frame = block(0, 2, 0, 2, 200) + block(6, 8, 6, 8, 100)  # 200/255 on, 100/255 off
    seg_file(folder.parent / "frac.dcm", uid, [(2, 2.0, frame)], fractional=True)
    masks = read_dicom_seg(folder.parent / "frac.dcm", read_dicom_series(folder))
    assert masks["tumour"][1].sum() == 4 and masks["tumour"][1, :2, :2].all()
    assert not masks["liver"].any()


@pytest.mark.parametrize(
    ("z", "in_plane", "message"),
    [
        (9.0, (0.0, 0.0), r"frame 0 at z=9.00 mm lies on no slice of"),
        (2.0, (1.0, 0.0), r"frame 0 is shifted in-plane"),
    ],
)
def test_seg_frame_off_the_grid(grid_series: tuple[Path, str], z: float, in_plane, message: str) -> None:
    folder, uid = grid_series
    seg_file(folder.parent / "off.dcm", uid, [(1, z, block(0, 1, 0, 1))], in_plane=in_plane)
    with pytest.raises(InputError, match=message):
        read_dicom_seg(folder.parent / "off.dcm", read_dicom_series(folder))


def test_list_dicom_series(grid_series: tuple[Path, str]) -> None:
    folder, uid = grid_series
    seg_file(folder / "SEG.dcm", uid, [(1, 0.0, block(0, 1, 0, 1))])
    infos = list_dicom_series(folder)
    assert [(i.series_uid == uid, i.modality, len(i.files), i.is_image) for i in infos] == [
        (True, "CT", 3, True),
        (False, "SEG", 1, False),
    ]


# --- real lung CT (pycerr radiomics phantom, data files only) --------------------------------------

PATIENTS = {
    # shape (z, y, x), in-plane spacing, contoured slices of GTV-1 (counted in the RTSTRUCTs)
    1: ((60, 201, 204), 0.97699999809265, 26),
    2: ((41, 138, 141), 0.97699999809265, 7),
    3: ((46, 137, 136), 0.97699999809265, 12),
    4: ((56, 172, 178), 0.9765625, 23),
}


@pytest.fixture(scope="module")
def phantom_root() -> Path:
    spec = importlib.util.find_spec("cerr")  # locates the package without importing its (GPL) code
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pycerr not installed")
    root = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "radiomics_phantom_dicom"
    if not root.is_dir():
        pytest.skip("pycerr radiomics phantom not found")
    return root


@pytest.fixture(scope="module")
def phantom(phantom_root: Path) -> dict[int, tuple]:
    cases = {}
    for patient in PATIENTS:
        folder = phantom_root / f"pat_{patient}"
        start = time.process_time()
        volume = read_dicom_series(folder)
        rtstruct_path = next(folder.glob("DCM_RS_*.dcm"))
        gtv = read_rtstruct(rtstruct_path, volume)["GTV-1"]
        cpu_s = time.process_time() - start
        cases[patient] = (volume, gtv, rtstruct_path, cpu_s)
    return cases


@pytest.mark.parametrize("patient", sorted(PATIENTS))
def test_phantom_series_geometry_and_hu(phantom: dict, patient: int) -> None:
    volume, gtv, _, cpu_s = phantom[patient]
    shape, pixel_mm, contoured = PATIENTS[patient]
    assert volume.shape == shape
    assert volume.spacing == pytest.approx((3.0, pixel_mm, pixel_mm), abs=1e-5)
    assert volume.meta["Modality"] == "CT"
    # stored uint16 + intercept -1000: air outside the body is exactly -1000 HU, nothing below
    assert volume.array.min() == -1000.0
    assert np.percentile(volume.array, 1) <= -850.0
    assert 1000.0 < volume.array.max() < 4000.0
    assert gtv.shape == shape and (gtv.sum(axis=(1, 2)) > 0).sum() == contoured
    assert cpu_s < 2.0  # CPU seconds: series + RTSTRUCT, insensitive to other jobs on the machine


def polygon_area_and_centroid(points: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = points[:, 0], points[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2.0
    cx = ((x + np.roll(x, -1)) * cross).sum() / (6.0 * area)
    cy = ((y + np.roll(y, -1)) * cross).sum() / (6.0 * area)
    return abs(area), np.array([cx, cy, points[0, 2]])


@pytest.mark.parametrize("patient", sorted(PATIENTS))
def test_phantom_gtv_matches_its_contours(phantom: dict, patient: int) -> None:
    """The raster keeps the contours' area (within 2%) and lands where they are in patient space (< 0.5 mm)."""
    volume, gtv, rtstruct_path, _ = phantom[patient]
    contours = pydicom.dcmread(rtstruct_path).ROIContourSequence[0].ContourSequence
    area_mm2, weighted = 0.0, np.zeros(3)
    for contour in contours:
        area, centroid = polygon_area_and_centroid(np.asarray(contour.ContourData, float).reshape(-1, 3))
        area_mm2 += area
        weighted += area * centroid
    pixel_area = volume.spacing[1] * volume.spacing[2]
    assert gtv.sum() * pixel_area == pytest.approx(area_mm2, rel=0.02)
    z, y, x = np.nonzero(gtv)
    centre_ras = volume.affine @ np.array([x.mean(), y.mean(), z.mean(), 1.0])
    centre_lps = centre_ras[:3] * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(centre_lps, weighted / area_mm2, atol=0.5)


def test_phantom_slice_counts(phantom: dict) -> None:
    """docs/facts.md: 68 axial GTV slices with >= 20 px across the 4 patients.

    All 68 contoured slices carry GTV. With pixel centres, one (pat_4, z = -467.5 mm) has 18 px: its
    polygon area is 19.5 px, so it falls below 20; the count of 68 needs the contour line's pixels too.
    """
    areas = [phantom[p][1].sum(axis=(1, 2)) for p in PATIENTS]
    assert sum(int((a > 0).sum()) for a in areas) == 68
    assert sum(int((a >= 20).sum()) for a in areas) == 67
    assert sorted(a[a > 0].min() for a in areas)[0] == 18
    touched = [read_rtstruct(phantom[p][2], phantom[p][0], include_boundary=True)["GTV-1"] for p in PATIENTS]
    assert sum(int((t.sum(axis=(1, 2)) >= 20).sum()) for t in touched) == 68


def test_phantom_gtv_nifti_round_trip(phantom: dict, tmp_path: Path) -> None:
    volume, gtv, _, _ = phantom[1]
    back = read_nifti(write_nifti(gtv, tmp_path / "gtv.nii.gz", like=volume))
    assert back.shape == volume.shape
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array.astype(bool), gtv)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    assert back.spacing == pytest.approx(volume.spacing, abs=1e-5)


def test_seg_for_another_series_or_grid_is_rejected(grid_series: tuple[Path, str]) -> None:
    folder, _ = grid_series
    reference = read_dicom_series(folder)
    seg_file(folder.parent / "other.dcm", "9.8.7", [(1, 0.0, block(0, 1, 0, 1))])
    with pytest.raises(InputError, match=r"other.dcm: SEG refers to series 9.8.7, not to series"):
        read_dicom_seg(folder.parent / "other.dcm", reference)
    seg_file(folder.parent / "small.dcm", reference.meta["SeriesInstanceUID"], [(1, 0.0, np.zeros((6, 8)))])
    with pytest.raises(InputError, match=r"small.dcm: SEG frames are 6x8, the slices of .* are 8x8"):
        read_dicom_seg(folder.parent / "small.dcm", reference)
    with pytest.raises(InputError, match=r"s0.dcm: not a DICOM SEG file \(Modality CT\)"):
        read_dicom_seg(folder / "s0.dcm", reference)
