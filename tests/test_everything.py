"""Everything mode: stability score, prompt layouts, tile rules, window decoding and recall on real nuclei."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medsamkit.core.errors import InputError
from medsamkit.models.local_decode import decode_local
from medsamkit.prompts.boxes import box_iou
from medsamkit.samaug import everything as ev
from medsamkit.samaug import proposals
from medsamkit.samaug.everything import EverythingConfig


def test_stability_score_on_hand_made_logits():
    logits = np.array(
        [
            [3.0, 2.0, 0.5, -3.0],
            [1.5, 0.0, -0.5, -3.0],
            [-0.9, -1.0, -2.0, -3.0],
            [-3.0, -3.0, -3.0, -3.0],
        ]
    )
    # > +1: 3.0, 2.0, 1.5 (3 px); > -1: those + 0.5, 0.0, -0.5, -0.9 (7 px): 3 / 7.
    assert ev.stability_score(logits)[()] == pytest.approx(3 / 7)
    # offset 2: > 2: 3.0 (1 px); > -2: 8 px (all above -2: -1.0 counts, -2.0 does not).
    assert ev.stability_score(logits, offset=2.0)[()] == pytest.approx(1 / 8)
    batch = np.stack([logits, np.full((4, 4), -5.0)])
    np.testing.assert_allclose(ev.stability_score(batch), [3 / 7, 0.0])  # empty mask scores 0


def test_grid_layouts():
    boxes = proposals.grid_boxes((256, 256), (16, 24, 32), 16)
    assert boxes.shape == (768, 4)  # 16 x 16 centres x 3 sizes (the naive grid of docs/facts.md)
    assert boxes[0].tolist() == [0, 0, 15, 15]  # centre (8, 8), side 16
    assert boxes[:, [0, 1]].min() == 0 and boxes[:, [2, 3]].max() == 255
    pts = proposals.point_grid((100, 200), 4)
    assert pts.shape == (16, 2)
    assert pts[0].tolist() == [25.0, 12.5] and pts[-1].tolist() == [175.0, 87.5]


def test_expand_boxes_pads_and_clips():
    got = proposals.expand_boxes(np.array([[1, 2, 5, 6]]), (0, 3), (8, 7))
    assert got.tolist() == [[1, 2, 5, 6], [0, 0, 6, 7]]


def test_assign_to_windows_picks_the_most_central_tile():
    windows = [(0, 0, 256, 256), (0, 208, 256, 464)]  # (y0, x0, y1, x1)
    boxes = np.array([[10, 10, 30, 30], [240, 100, 260, 120], [400, 5, 420, 20]])
    assert proposals.assign_to_windows(boxes, windows).tolist() == [0, 1, 1]


LEFT, RIGHT = (0, 0, 256, 256), (0, 208, 256, 464)  # (y0, x0, y1, x1) tiles of a 256 x 464 image


@pytest.mark.parametrize(
    ("box", "window", "expected"),
    [
        ((300, 10, 320, 20), RIGHT, False),
        ((208, 10, 220, 20), RIGHT, True),  # the right tile's left edge lies inside the image
        ((0, 0, 20, 20), LEFT, False),  # image border: no other tile covers it
        ((240, 10, 255, 20), LEFT, True),  # the left tile's right edge (x 255) is inner
        ((400, 240, 463, 255), RIGHT, False),  # right and bottom edges are the image's
    ],
)
def test_touches_inner_border(box, window, expected):
    assert ev._touches_inner_border(box, window, (256, 464)) is expected


def test_blob_proposals_find_dark_discs_on_bright_background():
    yy, xx = np.mgrid[:64, :80]
    image = np.full((64, 80), 220, np.uint8)
    image[(yy - 15) ** 2 + (xx - 12) ** 2 <= 25] = 40  # disc radius 5 at (x 12, y 15)
    image[(yy - 40) ** 2 + (xx - 50) ** 2 <= 36] = 40  # disc radius 6 at (x 50, y 40)
    boxes = proposals.blob_proposals(image)
    boxes = boxes[np.argsort(boxes[:, 0])]
    assert len(boxes) == 2
    np.testing.assert_allclose(boxes, [[7, 10, 17, 20], [44, 34, 56, 46]], atol=1)


@pytest.fixture(scope="module")
def monuseg_tile(monuseg_root):
    """Top-left 256x256 of a real MoNuSeg test image (33 nuclei) and its instance labels."""
    from medsamkit.io.images import read_image, read_label

    name = "TCGA-2Z-A9J9-01A-01-TS1.png"
    image = read_image(monuseg_root / "test" / "images" / name)[:256, :256]
    label = read_label(monuseg_root / "test" / "labels" / name)[:256, :256]
    return image, label


def test_window_decoding_equals_full_decoding_with_a_full_window(predictor, monuseg_tile):
    predictor.set_image(monuseg_tile[0])
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [100.0, 120.0, 130.0, 140.0]])
    with torch.inference_mode():
        full, iou_full = predictor.model.decode(predictor.embedding.features, None, boxes, None, False)
    local, iou_local, origin = decode_local(predictor.model, predictor.embedding.features, boxes, None, 64, False)
    assert origin.tolist() == [[0, 0], [0, 0]]
    torch.testing.assert_close(local, full, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(iou_local, iou_full, atol=1e-4, rtol=1e-4)
    # Points with multimask output (SAM's grid mode) go through the same window code.
    points = (torch.tensor([[[20.0, 30.0]], [[200.0, 100.0]]]), torch.ones(2, 1, dtype=torch.long))
    with torch.inference_mode():
        full, iou_full = predictor.model.decode(predictor.embedding.features, points, None, None, True)
    local, iou_local, _ = decode_local(predictor.model, predictor.embedding.features, None, points, 64, True)
    assert local.shape == (2, 3, 256, 256)
    torch.testing.assert_close(local, full, atol=1e-3, rtol=1e-3)
    # A 16-token window (64 px) gives nearly the same mask at 1/16 of the tokens (measured IoU 0.81 here).
    near, _, origin = decode_local(predictor.model, predictor.embedding.features, boxes[:1], None, 16, False)
    assert origin.tolist() == [[0, 0]]
    full, _ = predictor.model.decode(predictor.embedding.features, None, boxes[:1], None, False)
    a, b = full[0, 0, :64, :64] > 0, near[0, 0] > 0
    assert (a & b).sum() / (a | b).sum() > 0.75


def test_generate_masks_recall_on_real_tile(predictor, monuseg_tile):
    image, label = monuseg_tile
    cfg = ev.EverythingConfig()
    records = ev.generate_masks(predictor, image, cfg)
    # Measured 0.758 (25/33 nuclei, 49 masks) with the defaults; the naive box grid found 0.35 (docs/facts.md).
    assert ev.instance_recall(records, label) >= 0.68
    assert 30 <= len(records) <= 80
    boxes = np.array([r.box for r in records])
    for r in records:
        x0, y0, x1, y1 = r.box
        assert r.crop.shape == (y1 - y0 + 1, x1 - x0 + 1) and r.area == r.crop.sum()
        assert r.predicted_iou > cfg.pred_iou_thresh and r.stability_score >= cfg.stability_thresh
        assert cfg.min_area <= r.area <= cfg.max_area
    iou = box_iou(boxes, boxes) - np.eye(len(boxes))
    assert iou.max() <= cfg.box_nms_thresh  # de-duplicated


def test_point_grid_runs_on_the_box_only_model(predictor, monuseg_tile):
    """SAMAug's point grid on the bundled LiteMedSAM: each grid point is answered by the click search."""
    image, label = monuseg_tile
    cfg = ev.EverythingConfig(proposal="points")  # 16 x 16 points on the tile
    records = ev.generate_masks(predictor, image, cfg)
    assert len(records) >= 10
    assert ev.instance_recall(records, label) >= 0.5  # measured 0.606 (20 of 33 nuclei; blob boxes: 0.758)
    assert all(r.predicted_iou > cfg.pred_iou_thresh and cfg.min_area <= r.area <= cfg.max_area for r in records)


def test_window_decoding_fast_path_equals_official_modules(predictor, monuseg_tile):
    """Per-prompt windows (crops of the embedding and of the positions) through the re-associated decoder
    give the official transformer's logits; a wrapped (e.g. LoRA) decoder would take the official path."""
    predictor.set_image(monuseg_tile[0])
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [100.0, 120.0, 130.0, 140.0], [200.0, 30.0, 230.0, 52.0]])
    model = predictor.model
    out = {}
    try:
        for fast in (True, False):
            model.use_fast_decoder = fast
            out[fast] = decode_local(predictor.model, predictor.embedding.features, boxes, None, 16, False)
    finally:
        model.use_fast_decoder = True
    (fast, iou_fast, origin_fast), (ref, iou_ref, origin_ref) = out[True], out[False]
    assert fast.shape == ref.shape == (3, 1, 64, 64)
    assert torch.equal(origin_fast, origin_ref) and origin_fast[1].tolist() != [0, 0]
    assert (fast - ref).abs().max().item() < 1e-3
    assert (iou_fast - iou_ref).abs().max().item() < 1e-4
    assert ((fast > 0) == (ref > 0)).float().mean().item() >= 0.999
    assert (ref > 0).sum().item() > 0


@pytest.fixture(scope="module")
def dsb_crop_folder(tmp_path_factory):
    """A one-image data set: a 128x128 crop of builtin:dsb-nuclei as 8-bit PNG with its uint16 labels."""
    from PIL import Image

    from medsamkit.io.datasets import open_dataset
    from medsamkit.io.images import write_mask

    case = next(open_dataset("builtin:dsb-nuclei").cases())
    lo, hi = np.percentile(case.image, [0.5, 99.5])
    u8 = (np.clip((case.image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    root = tmp_path_factory.mktemp("dsb_points")
    (root / "images").mkdir()
    Image.fromarray(u8[:128, 128:256]).save(root / "images" / "crop.png")
    write_mask(root / "labels" / "crop.png", case.label[:128, 128:256].astype(np.uint16))
    return root


def test_points_mode_takes_a_litemedsam_fine_tuned_with_points(dsb_crop_folder, tmp_path, predictor):
    """Bug 3: point support comes from the model, not its registry name. A LiteMedSAM decoder fine-tuned with
    point prompts keeps the name `litemedsam` yet answers points, so `samaug masks --proposal points` runs it;
    the bundled LiteMedSAM (box-only) answers the grid by the click search."""
    from medsamkit.models import load_model
    from medsamkit.samaug.priors import PriorsConfig, compute_priors, load_masks
    from medsamkit.training import FinetuneConfig, finetune

    run = tmp_path / "run"
    finetune(FinetuneConfig(data=[str(dsb_crop_folder)], out=str(run), prompts="center,random1", epochs=1,
                            max_steps=2, batch_size=2, max_objects=2, val_fraction=0.0, show_progress=False))
    tuned = load_model(str(run / "best.pt"))
    assert tuned.name == "litemedsam" and tuned.point_prompts
    assert predictor.model.name == "litemedsam" and not predictor.model.point_prompts

    # Two steps do not teach the IoU head to trust point masks (it predicts ~0.1-0.2) and leave them faint
    # (logits ~0.05), so the quality filters are opened: this checks that points mode decodes the fine-tuned
    # model (default 16-token windows), not how well.
    points = EverythingConfig(proposal="points", points_per_side=4, pred_iou_thresh=0.0, stability_thresh=0.0,
                              min_area=1)
    cfg = PriorsConfig(data=str(dsb_crop_folder), out=str(tmp_path / "masks"), model=str(run / "best.pt"),
                       everything=points, write_priors=False, progress=False)
    index = compute_priors(cfg)  # loads the model from its run checkpoint, as `--model RUN/best.pt` does
    records, shape = load_masks(tmp_path / "masks" / "masks" / "crop.npz")
    assert index["images"][0]["masks"] == len(records) > 0 and shape == (128, 128)
    assert all(points.min_area <= r.area <= points.max_area for r in records)

    # Local decoding of points: a window as large as the embedding is the whole-embedding decoder (same
    # masks); a 16-token window around each point (a quarter of the 64x64 grid: 32 px of this 128 px crop)
    # confines every mask to it.
    from PIL import Image

    from medsamkit.predictor import Predictor
    from medsamkit.samaug.everything import generate_masks

    image = np.asarray(Image.open(dsb_crop_folder / "images" / "crop.png"))
    tuned_predictor = Predictor(tuned)
    whole = generate_masks(tuned_predictor, image, replace(points, point_window_tokens=None))
    same = generate_masks(tuned_predictor, image, replace(points, point_window_tokens=64))
    assert [r.box for r in same] == [r.box for r in whole]
    assert np.allclose([r.stability_score for r in same], [r.stability_score for r in whole], atol=1e-3)
    local = generate_masks(tuned_predictor, image, points)
    assert len(local) > 0
    assert all(x1 - x0 < 32 and y1 - y0 < 32 for x0, y0, x1, y1 in (r.box for r in local))

    bundled = PriorsConfig(data=str(dsb_crop_folder), out=str(tmp_path / "bundled"), everything=points,
                           write_priors=False, progress=False)
    assert compute_priors(bundled, predictor)["images"][0]["masks"] > 0


def test_whole_image_as_one_tile():
    assert EverythingConfig(tile_size=0).tile_size == 0
    with pytest.raises(InputError, match="tile size 16"):
        EverythingConfig(tile_size=16)
