"""Predictor: real weights on a real lung CT slice, batching, coordinate geometry, and bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsamkit.core.errors import InputError
from medsamkit.metrics import dice
from medsamkit.models.sam import Preprocessing
from medsamkit.predictor import Predictor, as_rgb_float, preprocess
from medsamkit.prompts import tight_box


@pytest.fixture(scope="module")
def lung_predictor(litemedsam, lung_slice):
    image, gtv = lung_slice
    return Predictor(litemedsam).set_image(image, "lung"), gtv


def test_box_on_lung_slice_segments_gtv(lung_predictor):
    pred, gtv = lung_predictor
    out = pred.predict(boxes=tight_box(gtv))
    assert out.masks.shape == (1, 1) + gtv.shape and out.masks.dtype == bool
    assert dice(out.masks[0, 0], gtv) >= 0.75
    assert 0.0 < out.iou[0, 0] <= 1.2
    assert out.low_res_logits.shape == (1, 1, 256, 256)


def test_multimask_returns_three_and_best_picks_highest_iou(lung_predictor):
    pred, gtv = lung_predictor
    out = pred.predict(boxes=tight_box(gtv), multimask=True)
    assert out.masks.shape[:2] == (1, 3)
    masks, iou, logits = out.best()
    assert iou[0] == out.iou[0].max() and masks.shape == (1,) + gtv.shape and logits.shape == (1, 256, 256)


def test_batched_prompts_equal_one_by_one(lung_predictor):
    pred, gtv = lung_predictor
    b = tight_box(gtv)
    boxes = np.stack([b, b + [-5, -5, 5, 5], b + [3, 0, 8, 2], [10, 10, 60, 80]]).astype(np.float32)
    batched = pred.predict(boxes=boxes)
    for i, box in enumerate(boxes):
        single = pred.predict(boxes=box)
        np.testing.assert_array_equal(single.masks[0], batched.masks[i])
        np.testing.assert_allclose(single.iou[0], batched.iou[i], atol=1e-5)
    # box + one point per prompt, batched vs single
    pts = np.array([[[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]]] * 2, dtype=np.float32)
    both = pred.predict(boxes=boxes[:2], points=pts, point_labels=np.ones((2, 1)))
    one = pred.predict(boxes=boxes[1], points=pts[1], point_labels=[1])
    np.testing.assert_array_equal(one.masks[0], both.masks[1])


def test_mask_input_roundtrip_accepted(lung_predictor):
    pred, gtv = lung_predictor
    first = pred.predict(boxes=tight_box(gtv))
    again = pred.predict(boxes=tight_box(gtv), mask_input=first.low_res_logits)
    assert dice(again.masks[0, 0], gtv) >= 0.7


@pytest.mark.parametrize("shape", [(300, 700), (700, 300), (257, 1000)])
def test_coordinates_round_trip_on_non_square_images(shape):
    """A box maps into the model frame onto the resized object, and logits there map back onto the box."""
    pre = Preprocessing(256, "longest", "minmax", "area")
    h, w = shape
    img = np.zeros((h, w), np.float32)
    y0, y1, x0, x1 = h // 3, h // 3 + h // 4, w // 2, w // 2 + w // 5
    img[y0:y1, x0:x1] = 1.0
    x, (nh, nw) = preprocess(pre, as_rgb_float(img))
    assert x.shape == (1, 3, 256, 256) and max(nh, nw) == 256
    sx, sy = nw / w, nh / h
    on = x[0, 0] > 0.5
    rows, cols = np.nonzero(on.numpy())
    assert abs(rows.min() - y0 * sy) <= 1 and abs(rows.max() + 1 - y1 * sy) <= 1
    assert abs(cols.min() - x0 * sx) <= 1 and abs(cols.max() + 1 - x1 * sx) <= 1
    assert not x[0, :, nh:, :].any() and not x[0, :, :, nw:].any()  # padding bottom/right only

    class _Stub(torch.nn.Module):  # geometry only: postprocess needs the preprocessing and embedding sizes
        preprocessing = pre

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

    from medsamkit.predictor import Embedding

    pr = Predictor.__new__(Predictor)
    pr.model, pr.embedding = _Stub(), Embedding(torch.zeros(1), (h, w), (nh, nw))
    logits = torch.where(on, 10.0, -10.0)[None, None]
    back = pr.postprocess(logits)[0, 0].numpy()
    assert dice(back, img > 0) > 0.97


@pytest.mark.parametrize("make", [
    lambda g: g,  # grey float
    lambda g: np.repeat((g * 255).astype(np.uint8)[..., None], 3, -1),  # RGB uint8
    lambda g: np.concatenate([np.repeat((g * 255).astype(np.uint8)[..., None], 3, -1),
                              np.full(g.shape + (1,), 255, np.uint8)], -1),  # RGBA
    lambda g: (g * 65535).astype(np.uint16),  # 16-bit grey
])
def test_accepts_grey_rgb_rgba_uint16(litemedsam, lung_slice, make):
    image, gtv = lung_slice
    pred = Predictor(litemedsam).set_image(make(image))
    assert dice(pred.predict(boxes=tight_box(gtv)).masks[0, 0], gtv) >= 0.7


@pytest.mark.parametrize("kwargs,msg", [
    ({"boxes": [10, 10, 600, 50]}, r"lung: box \[10.0, 10.0, 600.0, 50.0\] lies outside the image \(width 204, height 201\)"),
    ({"boxes": [-3, 10, 40, 50]}, "lies outside the image"),
    ({"boxes": [50, 10, 40, 50]}, "is inverted"),
    ({"boxes": [np.nan, 10, 40, 50]}, "contains NaN"),
    ({"boxes": [1, 2, 3]}, "boxes must be"),
    ({"points": [[600, 10]]}, "point .* lies outside the image"),
    ({"points": [[10, 10]], "point_labels": [3]}, "point labels must be 1"),
    ({}, "no prompt given"),
])
def test_bad_prompts_raise_clear_errors(lung_predictor, kwargs, msg):
    pred, _ = lung_predictor
    with pytest.raises(InputError, match=msg):
        pred.predict(**kwargs)


@pytest.mark.parametrize("image,msg", [
    (np.zeros((0, 0)), "expected a 2D grey/RGB/RGBA image"),
    (np.zeros((4, 5, 6, 2)), "expected a 2D grey/RGB/RGBA image"),
    (np.zeros((20, 20, 2)), "expected 1, 3 or 4 channels"),
    (np.where(np.eye(20) > 0, np.nan, 0.0), "image contains 20 NaN/inf pixels"),
])
def test_bad_images_raise_clear_errors(litemedsam, image, msg):
    with pytest.raises(InputError, match=msg):
        Predictor(litemedsam).set_image(image, source="scan.png")


def test_predict_before_set_image(litemedsam):
    with pytest.raises(InputError, match="no image set"):
        Predictor(litemedsam).predict(boxes=[0, 0, 5, 5])


def test_unreadable_image_file(tmp_path):
    from medsamkit.io.images import read_image

    f = tmp_path / "broken.png"
    f.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match=r"broken.png: unreadable image"):
        read_image(f)
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "missing.png")
