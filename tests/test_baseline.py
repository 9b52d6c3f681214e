"""The random-walker baseline on real builtin:dsb-nuclei: it runs inside a crop around the prompt, the crop
leaves a box prompt's answer unchanged, and its clicks come from the seeded session (reproducible)."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.core.objects import extract_objects
from medsamkit.core.seeds import name_key
from medsamkit.evaluation.baseline import BOX_RING, baseline_crop, random_walker_segment, run_mode_baseline
from medsamkit.io.builtin import open_builtin
from medsamkit.metrics import dice
from medsamkit.prompts import Prompt, parse_modes


@pytest.fixture(scope="module")
def nuclei():
    """The dsb image and its three largest nuclei away from the border."""
    case = next(open_builtin("dsb-nuclei").cases())
    objs = [o for o in extract_objects(case.label, case.kind, 20)
            if min(o.slices[0].start, o.slices[1].start) > 40 and max(o.slices[0].stop, o.slices[1].stop) < 470]
    return case.image, sorted(objs, key=lambda o: -o.area)[:3]


def _outside(mask: np.ndarray, window) -> int:
    y0, x0, y1, x1 = window
    inside = np.zeros_like(mask)
    inside[y0:y1, x0:x1] = True
    return int((mask & ~inside).sum())


def test_mask_is_computed_inside_the_crop(nuclei):
    image, objs = nuclei
    for obj in objs:
        box = Prompt(box=obj.box())
        crop = baseline_crop(box, image.shape[:2])
        x0, y0, x1, y1 = obj.box()
        assert crop == (int(y0) - BOX_RING, int(x0) - BOX_RING, int(y1) + BOX_RING + 1, int(x1) + BOX_RING + 1)
        mask = random_walker_segment(image, box)
        assert mask.shape == image.shape[:2] and mask.any() and _outside(mask, crop) == 0
        cy, cx = (np.argwhere(obj.crop).mean(0) + [obj.slices[0].start, obj.slices[1].start]).astype(int)
        point = Prompt(points=[[cx, cy]], labels=[1])
        crop = baseline_crop(point, image.shape[:2], margin=20)
        assert crop == (cy - 20, cx - 20, cy + 21, cx + 21)
        assert _outside(random_walker_segment(image, point, margin=20), crop) == 0


def test_crop_leaves_box_dice_unchanged(nuclei):
    image, objs = nuclei
    h, w = image.shape[:2]
    for obj in objs:
        truth = obj.mask((h, w))
        box = Prompt(box=obj.box())
        cropped = dice(random_walker_segment(image, box), truth)
        whole = dice(random_walker_segment(image, box, crop=(0, 0, h, w), solve_side=None), truth)
        assert cropped > 0.3 and abs(cropped - whole) < 0.01


def test_baseline_clicks_are_reproducible(nuclei):
    image, objs = nuclei
    h, w = image.shape[:2]
    key = name_key("dsb-nuclei/img2d")
    (mode,) = parse_modes("iter3")
    first = run_mode_baseline(image, objs, (0, 0, h, w), mode, 0, key, 32)
    again = run_mode_baseline(image, objs, (0, 0, h, w), mode, 0, key, 32)
    for a, b in zip(first, again):
        assert [p.as_dict() for p in a.prompts] == [p.as_dict() for p in b.prompts]
        assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    (rand,) = parse_modes("random3")
    seeds = [[p.as_dict() for p in r.prompts] for r in run_mode_baseline(image, objs, (0, 0, h, w), rand, 0, key, 32)]
    other = [[p.as_dict() for p in r.prompts] for r in run_mode_baseline(image, objs, (0, 0, h, w), rand, 1, key, 32)]
    assert seeds != other  # the seed drives the baseline's prompts
