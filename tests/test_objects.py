"""Objects from label maps: ids, areas, boxes, thresholds, class mode, input errors, a MoNuSeg label."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsamkit.core.errors import InputError
from medsamkit.core.objects import SAM_MED2D_MIN_FRACTION, ImageObject, extract_objects


def hand_label_map() -> np.ndarray:
    """8x10 instance map: id 7 (2x3 block), id 3 (3x4 block at the bottom-right corner), id 12 (one pixel)."""
    lab = np.zeros((8, 10), dtype=np.uint16)
    lab[1:3, 1:4] = 7
    lab[5:8, 6:10] = 3
    lab[0, 9] = 12
    return lab


def test_instance_ids_areas_boxes():
    objs = extract_objects(hand_label_map())
    assert objs.labels == [3, 7, 12]
    assert [o.area for o in objs] == [12, 6, 1]
    assert objs.skipped_small == 0
    assert objs.image_shape == (8, 10)
    boxes = {o.label: o.box().tolist() for o in objs}
    assert boxes == {3: [6, 5, 9, 7], 7: [1, 1, 3, 2], 12: [9, 0, 9, 0]}
    assert objs[0].box().dtype == np.float32
    assert objs[1].slices == (slice(1, 3), slice(1, 4))
    assert objs[1].crop.shape == (2, 3) and objs[1].crop.all()


def test_full_mask_matches_label_map():
    lab = hand_label_map()
    for obj in extract_objects(lab):
        np.testing.assert_array_equal(obj.mask(lab.shape), lab == obj.label)


@pytest.mark.parametrize(
    ("window", "expected_pixels", "expected_shape"),
    [
        ((0, 0, 8, 10), 12, (8, 10)),  # whole image
        ((6, 8, 8, 10), 4, (2, 2)),  # bottom-right 2x2 corner, all inside id 3
        ((4, 5, 6, 7), 1, (2, 2)),  # touches only pixel (row 5, col 6)
        ((0, 0, 4, 4), 0, (4, 4)),  # misses id 3 entirely
    ],
)
def test_mask_in_window(window, expected_pixels, expected_shape):
    obj = next(o for o in extract_objects(hand_label_map()) if o.label == 3)
    part = obj.mask_in(window)
    assert part.shape == expected_shape
    assert int(part.sum()) == expected_pixels
    y0, x0, y1, x1 = window
    np.testing.assert_array_equal(part, obj.mask((8, 10))[y0:y1, x0:x1])


@pytest.mark.parametrize(
    ("min_area", "min_fraction", "kept", "skipped"),
    [
        (0, 0.0, [3, 7, 12], 0),
        (2, 0.0, [3, 7], 1),  # the one-pixel id 12 goes
        (6, 0.0, [3, 7], 1),  # area 6 is kept: the rule is area < min_area
        (7, 0.0, [3], 2),
        (0, 0.1, [3], 2),  # 10% of 80 px = 8 px
        (0, 0.15, [3], 2),  # 12 px threshold keeps the 12-px object
        (13, 0.0, [], 3),
    ],
)
def test_small_objects_skipped_and_counted(min_area, min_fraction, kept, skipped):
    objs = extract_objects(hand_label_map(), min_area=min_area, min_fraction=min_fraction)
    assert objs.labels == kept
    assert objs.skipped_small == skipped


def test_class_mode_keeps_separate_regions_as_one_object():
    lab = np.zeros((6, 6), dtype=np.uint8)
    lab[0:2, 0:2] = 2  # two separate regions of class 2 (e.g. two lungs)
    lab[4:6, 3:6] = 2
    lab[3, 0] = 5
    objs = extract_objects(lab, kind="class")
    assert objs.kind == "class"
    assert objs.labels == [2, 5]
    lungs = objs[0]
    assert lungs.area == 4 + 6
    assert lungs.box().tolist() == [0, 0, 5, 5]
    assert lungs.crop.shape == (6, 6)
    np.testing.assert_array_equal(lungs.mask(lab.shape), lab == 2)


def test_empty_map_and_bool_map():
    assert len(extract_objects(np.zeros((4, 4), dtype=np.uint8))) == 0
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 2:5] = True
    objs = extract_objects(mask, kind="class")
    assert objs.labels == [1] and objs[0].area == 6 and objs[0].box().tolist() == [2, 1, 4, 2]


def test_sparse_large_ids_and_whole_float_labels():
    lab = np.zeros((5, 5), dtype=np.int64)
    lab[0, 0] = 1_000_000_000
    lab[4, 3:5] = 5
    objs = extract_objects(lab)
    assert objs.labels == [5, 1_000_000_000]
    assert [o.area for o in objs] == [2, 1]
    assert objs[1].box().tolist() == [0, 0, 0, 0]
    # NIfTI labels often arrive as floats holding whole numbers.
    assert extract_objects(lab.astype(np.float32)).labels == [5, 1_000_000_000]


@pytest.mark.parametrize(
    ("label_map", "message"),
    [
        (np.array([[0.0, 1.5], [0.0, 0.0]]), "non-integer"),
        (np.array([[0.0, np.nan], [0.0, 0.0]]), "NaN"),
        (np.zeros((2, 3, 4), dtype=np.uint8), "2-D"),
        (np.zeros(5, dtype=np.uint8), "2-D"),
        (np.array([[0, -1], [0, 2]], dtype=np.int32), "negative"),
        (np.array([["a", "b"], ["c", "d"]]), "integers"),
    ],
)
def test_bad_label_maps_raise_one_line(label_map, message):
    with pytest.raises(InputError, match=message) as info:
        extract_objects(label_map, source="case_01.png")
    assert str(info.value).startswith("case_01.png: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kind": "semantic"}, "kind"), ({"min_area": -1}, "min_area"), ({"min_fraction": 1.5}, "min_fraction")],
)
def test_bad_options_raise(kwargs, message):
    with pytest.raises(InputError, match=message):
        extract_objects(hand_label_map(), **kwargs)


def test_monuseg_label_complete(monuseg_root):
    # Timing of extract_objects on this label: benchmarks/metrics_speed.py (no wall-clock limits in tests).
    path = sorted((monuseg_root / "test" / "labels").glob("*.png"))[0]
    lab = np.array(Image.open(path))
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    objs = extract_objects(lab)
    assert objs.labels == ids.tolist()
    assert [o.area for o in objs] == counts.tolist()
    assert sum(o.crop.size for o in objs) < lab.size  # crops only, never full-size masks
    some = objs[len(objs) // 2]
    np.testing.assert_array_equal(some.mask(lab.shape), lab == some.label)
    # The SAM-Med2D rule (0.153% of a 1000x1000 image = 1530 px) drops every nucleus at native size.
    strict = extract_objects(lab, min_fraction=SAM_MED2D_MIN_FRACTION)
    assert strict.skipped_small == int((counts < 1530).sum())
    assert len(strict) == int((counts >= 1530).sum())


def test_image_object_is_plain_data():
    obj = ImageObject(4, (slice(2, 4), slice(1, 2)), np.array([[True], [False]]), 1)
    assert obj.box().tolist() == [1, 2, 1, 3]
    full = obj.mask((5, 5))
    assert full.sum() == 1 and full[2, 1]
