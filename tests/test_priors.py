"""SAMAug priors: hand-made masks -> exact prior maps, fusion shapes/dtypes/normalisation, saved files, resume and
refusal through the run store, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from medsamkit.core.errors import InputError
from medsamkit.core.results import read_rows
from medsamkit.samaug.everything import EverythingConfig, MaskRecord
from medsamkit.samaug.priors import (
    PriorsConfig,
    boundary_prior,
    compute_priors,
    fuse,
    load_masks,
    load_priors,
    save_masks,
    segmentation_prior,
)


def record(box, crop, stability, piou=0.9) -> MaskRecord:
    crop = np.asarray(crop, bool)
    return MaskRecord(crop, tuple(box), int(crop.sum()), piou, stability)


SQUARE = record((1, 1, 3, 3), np.ones((3, 3)), 0.5)
CORNER = record((3, 3, 4, 4), [[1, 1], [1, 0]], 0.25)
DOT = record((2, 2, 2, 2), [[1]], 1.0)


def test_segmentation_prior_sums_stability_on_overlaps():
    expected = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 0.5, 0.5, 0.5, 0],
            [0, 0.5, 0.5, 0.5, 0],
            [0, 0.5, 0.5, 0.75, 0.25],
            [0, 0, 0, 0.25, 0],
        ],
        dtype=np.float32,
    )
    got = segmentation_prior([SQUARE, CORNER], (5, 5))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(segmentation_prior([], (2, 3)), np.zeros((2, 3), np.float32))


def test_boundary_prior_outer_ring_and_thickness():
    ring = boundary_prior([DOT], (5, 5), thickness=1)
    expected_ring = np.zeros((5, 5), np.uint8)
    expected_ring[[1, 2, 2, 3], [2, 1, 3, 2]] = 1  # 4-neighbours: the outer ring of one pixel
    assert ring.dtype == np.uint8
    np.testing.assert_array_equal(ring, expected_ring)
    thick = boundary_prior([DOT], (5, 5), thickness=2)
    yy, xx = np.mgrid[:5, :5]
    diamond = (np.abs(yy - 2) + np.abs(xx - 2) <= 2).astype(np.uint8)  # ring grown by a radius-1 disk
    np.testing.assert_array_equal(thick, diamond)


def test_boundary_prior_is_binary_union_and_clipped_at_image_border():
    a = record((0, 0, 1, 1), np.ones((2, 2)), 0.9)
    b = record((0, 0, 1, 1), np.ones((2, 2)), 0.1)
    got = boundary_prior([a, b], (4, 4), thickness=1)
    expected = np.zeros((4, 4), np.uint8)
    expected[2, :2] = 1
    expected[:2, 2] = 1
    np.testing.assert_array_equal(got, expected)  # overlapping rings stay 1
    with pytest.raises(InputError, match="thickness"):
        boundary_prior([a], (4, 4), thickness=0)


@pytest.mark.parametrize(
    ("image", "channel0"),
    [
        (np.full((4, 5, 3), 255, np.uint8), 1.0),
        (np.full((4, 5, 4), 51, np.uint8), 0.2),  # RGBA: alpha dropped
        (np.full((4, 5), 0.5, np.float32), 0.5),  # grey float
        (np.full((4, 5, 1), 0.25, np.float32), 0.25),  # grey with a channel axis
        (np.full((4, 5, 3), 1.7, np.float64), 0.0),  # outside [0, 1]: min-max, and a constant image is 0
    ],
)
def test_fuse_shapes_dtypes_and_clip(image, channel0):
    seg = np.zeros((4, 5), np.float32)
    seg[0, 0] = 1.75  # an overlap of masks: clipped to 1 before adding
    bnd = np.zeros((4, 5), np.uint8)
    bnd[1, 1] = 1
    out = fuse(image, seg, bnd)
    assert out.shape == (4, 5, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], channel0, rtol=1e-6)
    grey = image.ndim == 2 or image.shape[-1] == 1
    base = 0.0 if grey else channel0
    assert out[0, 0, 1] == pytest.approx(base + 1.0)
    assert out[1, 1, 2] == pytest.approx(base + 1.0)
    assert out[2, 2, 1] == pytest.approx(base) and out[2, 2, 2] == pytest.approx(base)
    raw = fuse(image, seg, bnd, normalisation="none")
    assert raw[0, 0, 1] == pytest.approx(base + 1.75)


def test_fuse_rejects_bad_input():
    img = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(InputError, match="do not match"):
        fuse(img, np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(InputError, match="normalisation"):
        fuse(img, np.zeros((4, 5)), np.zeros((4, 5)), normalisation="max")


# A hand-made 3x3 case for the paper's fusion: A = pixel (0,0), B = the bottom-right 2x2 block, C = pixel
# (1,1) on top of B. Thick boundaries (both sides of each edge; the image border is no edge): A marks
# (0,0),(0,1),(1,0); B marks its pixels with an outside neighbour (all but (2,2)) and (0,1),(0,2),(1,0),(2,0);
# C marks (1,1) and its four neighbours. Union: every pixel but (2,2).
PAPER_A = record((0, 0, 0, 0), [[1]], 0.75)
PAPER_B = record((1, 1, 2, 2), np.ones((2, 2)), 0.5)
PAPER_C = record((1, 1, 1, 1), [[1]], 1.0)
PAPER_IMAGE = np.dstack([np.zeros((3, 3)), np.full((3, 3), 255), np.full((3, 3), 51)]).astype(np.uint8)


def test_paper_fusion_on_a_hand_made_3x3_case(tmp_path):
    from medsamkit.samaug.fusion import paper_priors
    from medsamkit.samaug.unet import network_input

    seg, bnd = paper_priors([PAPER_A, PAPER_B, PAPER_C], (3, 3))
    np.testing.assert_array_equal(seg, np.array([[0.75, 0, 0], [0, 1.5, 0.5], [0, 0.5, 0.5]], np.float32))
    np.testing.assert_array_equal(bnd, np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0]], np.uint8))
    # The U-Net input read from a priors folder holding only the masks: image / 255, green += the raw sum of
    # stability scores (2.5 at (1,1): no clipping), blue += the binarised thick boundary.
    save_masks(tmp_path / "masks" / "case.npz", [PAPER_A, PAPER_B, PAPER_C], (3, 3))
    x = network_input(PAPER_IMAGE, "case", tmp_path, "paper")
    np.testing.assert_allclose(x[..., 0], np.zeros((3, 3)), atol=0)
    np.testing.assert_allclose(x[..., 1], [[1.75, 1, 1], [1, 2.5, 1.5], [1, 1.5, 1.5]], rtol=1e-6)
    np.testing.assert_allclose(x[..., 2], [[1.2, 1.2, 1.2], [1.2, 1.2, 1.2], [1.2, 1.2, 0.2]], rtol=1e-6)
    # The clip rule on the same seg prior caps the green channel at 1 + 1 where the masks overlap.
    clipped = fuse(PAPER_IMAGE, seg, bnd, normalisation="clip")
    assert clipped[1, 1, 1] == pytest.approx(2.0) and clipped[0, 0, 1] == pytest.approx(1.75)


def test_paper_boundary_equals_find_boundaries_thick_on_whole_masks():
    from skimage.segmentation import find_boundaries

    from medsamkit.samaug.fusion import paper_boundary

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(3, 12, 2))
        records, expected = [], np.zeros((h, w), bool)
        for _ in range(3):
            m = rng.random((h, w)) < 0.3
            if not m.any():
                continue
            rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
            box = (cols[0], rows[0], cols[-1], rows[-1])
            records.append(record(box, m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 0.8))
            expected |= find_boundaries(m.astype(np.uint8), mode="thick")
        np.testing.assert_array_equal(paper_boundary(records, (h, w)), expected.astype(np.uint8))


def test_masks_file_roundtrip(tmp_path):
    path = save_masks(tmp_path / "m.npz", [SQUARE, CORNER, DOT], (5, 6))
    records, shape = load_masks(path)
    assert shape == (5, 6)
    assert [r.box for r in records] == [(1, 1, 3, 3), (3, 3, 4, 4), (2, 2, 2, 2)]
    assert [r.area for r in records] == [9, 3, 1]
    np.testing.assert_array_equal(records[1].crop, CORNER.crop)
    assert records[1].stability_score == pytest.approx(0.25)
    empty, shape = load_masks(save_masks(tmp_path / "e.npz", [], (3, 3)))
    assert empty == [] and shape == (3, 3)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="bad.npz"):
        load_masks(tmp_path / "bad.npz")


@pytest.fixture(scope="module")
def nuclei_folder(tmp_path_factory):
    """A one-image dataset: a 256x256 crop of builtin:dsb-nuclei (fluorescence nuclei)."""
    from medsamkit.io.datasets import open_dataset
    from medsamkit.io.images import write_mask

    try:
        case = next(open_dataset("builtin:dsb-nuclei").cases())
    except InputError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("dsb")
    write_mask(root / "images" / "crop.png", case.image[:256, :256])
    write_mask(root / "labels" / "crop.png", case.label[:256, :256])
    return root


def test_compute_priors_files_match_saved_masks_and_resume(nuclei_folder, tmp_path, predictor):
    cfg = PriorsConfig(data=str(nuclei_folder), out=str(tmp_path / "out"), progress=False)
    index = compute_priors(cfg, predictor)
    assert [e["name"] for e in index["images"]] == ["crop"] and not index["images"][0]["skipped"]
    assert index["images"][0]["masks"] >= 10  # 256x256 crop holds ~40 nuclei
    out = tmp_path / "out"
    records, shape = load_masks(out / "masks" / "crop.npz")
    seg, bnd = load_priors(out, "crop")
    assert shape == (256, 256) and seg.dtype == np.float32 and bnd.dtype == np.uint8
    np.testing.assert_array_equal(seg, segmentation_prior(records, shape))
    np.testing.assert_array_equal(bnd, boundary_prior(records, shape))
    from PIL import Image

    seg_png = np.asarray(Image.open(out / "priors" / "crop_seg.png"))
    np.testing.assert_array_equal(seg_png, np.round(seg * 1000).astype(np.uint16))
    assert np.asarray(Image.open(out / "visuals" / "crop.png")).shape == (256, 1024, 3)
    assert json.loads((out / "index.json").read_text())["images"][0]["name"] == "crop"

    # Resume: finished images are skipped (files untouched); a broken output is recomputed.
    stamp = (out / "masks" / "crop.npz").stat().st_mtime_ns
    again = compute_priors(cfg, predictor)
    assert again["images"][0]["skipped"] is True
    assert (out / "masks" / "crop.npz").stat().st_mtime_ns == stamp
    (out / "priors" / "crop.npz").write_bytes(b"truncated")
    third = compute_priors(cfg, predictor)
    assert third["images"][0]["skipped"] is False
    assert (out / "masks" / "crop.npz").stat().st_mtime_ns == stamp  # priors redone from the saved masks
    np.testing.assert_array_equal(load_priors(out, "crop")[0], seg)
    (out / "masks" / "crop.npz").write_bytes(b"truncated")
    fourth = compute_priors(cfg, predictor)
    assert fourth["images"][0]["skipped"] is False
    np.testing.assert_array_equal(load_priors(out, "crop")[0], seg)  # deterministic: the same masks again

    # The run store: one row per finished image (a redone image replaces its row), the image marked done.
    rows = read_rows(out / "images.csv")
    assert [r["name"] for r in rows] == ["crop"] and int(rows[0]["masks"]) == len(records)
    assert (out / "done.txt").read_text().split() == ["crop", "crop", "crop"]
    # More images, another device or a masks-only rerun are the same run: the image is skipped.
    assert compute_priors(replace(cfg, max_images=5, device="cpu"), predictor)["images"][0]["skipped"] is True
    assert compute_priors(replace(cfg, write_priors=False), predictor)["images"][0]["skipped"] is True
    # Settings that change the files are refused in one line naming them, and the folder is left as it was.
    config = (out / "config.json").read_text()
    refused = {
        "everything.min_area": replace(cfg, everything=EverythingConfig(min_area=30)),
        "boundary_thickness": replace(cfg, boundary_thickness=3),
        "model": replace(cfg, model="medsam"),
    }
    for key, other in refused.items():
        with pytest.raises(InputError, match=rf"holds results of a different configuration \({key} differ\)"):
            compute_priors(other, predictor)
    assert (out / "config.json").read_text() == config


def test_cli_masks_then_priors_on_one_folder(nuclei_folder, tmp_path):
    """`samaug masks` then `samaug priors` (the whole image as one tile, at most one image): the priors run
    reuses the saved masks; a rerun with another tile size is refused with the store's one-line message."""
    from click.testing import CliRunner

    import medsamkit.cli.samaug  # noqa: F401  (registers `samaug` on `main`)
    from medsamkit.cli import main

    out = tmp_path / "o"
    common = ["--data", str(nuclei_folder), "--out", str(out), "--tile", "0", "--max-images", "1"]
    runner = CliRunner()
    res = runner.invoke(main, ["samaug", "masks", *common])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["computed"] == 1  # after the progress bar
    assert not (out / "priors").exists()
    stamp = (out / "masks" / "crop.npz").stat().st_mtime_ns
    res = runner.invoke(main, ["samaug", "priors", *common])
    assert res.exit_code == 0, res.output
    assert (out / "masks" / "crop.npz").stat().st_mtime_ns == stamp  # masks reused, not recomputed
    records, shape = load_masks(out / "masks" / "crop.npz")
    np.testing.assert_array_equal(load_priors(out, "crop")[0], segmentation_prior(records, shape))
    assert json.loads((out / "config.json").read_text())["everything"]["tile_size"] == 0
    res = runner.invoke(main, ["samaug", "priors", "--data", str(nuclei_folder), "--out", str(out)])
    assert res.exit_code == 2
    assert res.output.strip() == (f"error: {out}: holds results of a different configuration "
                                  "(everything.tile_size differ); use another --out folder")


def test_load_priors_missing(tmp_path):
    with pytest.raises(InputError, match="no priors"):
        load_priors(tmp_path, "nothing")


def test_everything_config_rejects_unknown_proposal():
    with pytest.raises(InputError, match="proposal"):
        EverythingConfig(proposal="magic")


def test_cli_reports_bad_data_in_one_line(tmp_path):
    from click.testing import CliRunner

    import medsamkit.cli.samaug  # noqa: F401  (registers `samaug` until the lead adds it to cli/commands.py)
    from medsamkit.cli import main

    runner = CliRunner()
    missing = tmp_path / "nope"
    result = runner.invoke(main, ["samaug", "priors", "--data", str(missing), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {missing}: data not found (expected a folder, a volume file or builtin:NAME)"
    result = runner.invoke(main, ["samaug", "masks", "--help"])
    assert result.exit_code == 0 and "--stability-thresh" in result.output
    for flag in ("--tile", "--tile-overlap", "--max-images", "--window", "--model", "--checkpoint", "--device"):
        assert flag in result.output


def test_settings_a_proposal_mode_never_reads_do_not_count():
    """A box-grid folder stays the same run when the point-grid defaults change; what the mode reads counts,
    and under `auto` (the mode is the model's) every setting counts."""
    from dataclasses import asdict

    from medsamkit.samaug.priors import identity_differences

    grid = asdict(EverythingConfig(proposal="grid"))
    old = {"everything": {**grid, "points_per_side": 32, "point_window_tokens": None}}
    assert identity_differences(old, {"everything": grid}) == []
    assert identity_differences(old, {"everything": {**grid, "grid_stride": 8}}) == ["everything.grid_stride"]
    auto = asdict(EverythingConfig())
    assert identity_differences({"everything": auto}, {"everything": {**auto, "points_per_side": 8}}) == [
        "everything.points_per_side"]
