"""Simulated prompts: mode parsing, boxes, centre/random points, corrective clicks, the interactive loop."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.core.errors import InputError
from medsamkit.core.seeds import object_rng
from medsamkit.prompts import (
    Prompt,
    PromptMode,
    center_point,
    initial_prompt,
    next_click,
    parse_mode,
    parse_modes,
    random_points,
    run_interactive,
)


def rect(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("text", "name", "kind", "k", "n_points", "n_steps", "interactive"),
    [
        ("box", "box", "box", 0, 0, 1, False),
        ("box+", "box+5", "box+", 5, 0, 1, False),
        ("box+10", "box+10", "box+", 10, 0, 1, False),
        ("box+0", "box+0", "box+", 0, 0, 1, False),
        ("jitter", "jitter+5", "jitter", 5, 0, 1, False),
        ("jitter+3", "jitter+3", "jitter", 3, 0, 1, False),
        ("center", "center", "center", 1, 1, 1, False),
        ("random1", "random1", "random", 1, 1, 1, False),
        ("random3", "random3", "random", 3, 3, 1, False),
        ("iter5", "iter5", "iter", 5, 5, 5, True),
        ("box+iter3", "box+iter3", "box+iter", 3, 3, 4, True),
        (" BOX+5 ", "box+5", "box+", 5, 0, 1, False),
    ],
)
def test_parse_mode_table(text, name, kind, k, n_points, n_steps, interactive):
    mode = parse_mode(text)
    assert (mode.name, mode.kind, mode.k) == (name, kind, k)
    assert mode.n_points == n_points
    assert mode.n_steps == n_steps
    assert mode.interactive is interactive


def test_parse_modes_list_and_duplicates():
    modes = parse_modes("box,box+5,jitter+5,center,random3,iter5,box+iter3")
    assert [m.name for m in modes] == ["box", "box+5", "jitter+5", "center", "random3", "iter5", "box+iter3"]
    assert [m.name for m in parse_modes("box+, box+5,jitter")] == ["box+5", "jitter+5"]
    assert parse_modes(["iter9"]) == [PromptMode("iter9", "iter", 9)]


@pytest.mark.parametrize(
    "text",
    ["boxx", "random", "random0", "iter0", "box+iter0", "jitter-5", "box+-1", "centre", "iter 3", "box,,x"],
)
def test_parse_modes_errors_list_valid_forms(text):
    with pytest.raises(InputError, match="valid forms: box, box\\+K") as info:
        parse_modes(text)
    assert "\n" not in str(info.value)


def test_parse_modes_empty():
    with pytest.raises(InputError, match="no prompt modes"):
        parse_modes(" , ")


# ---------------------------------------------------------------- boxes


def test_box_and_box_plus_clipped_at_border():
    truth = rect((20, 30), (2, 6), (25, 30))  # rows 2..5, cols 25..29 (touches the right border)
    box = initial_prompt("box", truth, rng()).box
    assert box.dtype == np.float32 and box.tolist() == [25, 2, 29, 5]
    assert initial_prompt("box+5", truth, rng()).box.tolist() == [20, 0, 29, 10]
    assert initial_prompt("box+2", truth, rng()).box.tolist() == [23, 0, 29, 7]
    # a larger image than the mask (e.g. a window) moves the clip limits
    assert initial_prompt("box+5", truth, rng(), image_shape=(40, 40)).box.tolist() == [20, 0, 34, 10]
    prompt = initial_prompt("box", truth, rng())
    assert prompt.points.shape == (0, 2) and prompt.labels.shape == (0,)


def test_jitter_within_k_and_reproducible():
    truth = rect((64, 64), (20, 30), (10, 41))  # tight box [10, 20, 40, 29]
    tight = np.array([10, 20, 40, 29])
    seen = set()
    for seed in range(200):
        box = initial_prompt("jitter+5", truth, rng(seed)).box
        assert box.dtype == np.float32
        assert np.all(np.abs(box - tight) <= 5)
        assert box[0] <= box[2] and box[1] <= box[3]
        np.testing.assert_array_equal(box, initial_prompt("jitter+5", truth, rng(seed)).box)
        seen.update((box - tight).astype(int).tolist())
    assert seen == set(range(-5, 6))  # every offset in [-5, 5] occurs, nothing else


def test_jitter_thin_object_at_corner_stays_valid():
    truth = rect((10, 10), (0, 1), (0, 1))  # a single pixel in the corner
    for seed in range(100):
        x0, y0, x1, y1 = initial_prompt("jitter+3", truth, rng(seed)).box
        assert 0 <= x0 <= x1 <= 3 and 0 <= y0 <= y1 <= 3


# ---------------------------------------------------------------- points


def test_center_of_odd_square_is_unique():
    truth = rect((9, 9), (2, 7), (1, 6))  # 5x5 block, centre row 4, col 3
    assert center_point(truth, rng()).tolist() == [3, 4]


def test_center_of_plus_shape():
    plus = np.zeros((11, 11), dtype=bool)
    plus[4:7, 1:10] = True  # horizontal arm, 3 thick
    plus[1:10, 4:7] = True  # vertical arm
    # (5, 5) is 2*sqrt(2) from the notch corners (3, 3) etc.; its neighbours are at most sqrt(5)
    for seed in range(5):
        assert center_point(plus, rng(seed)).tolist() == [5, 5]


def test_center_ties_of_5x7_rectangle_are_seeded():
    # 5 rows x 7 cols: the middle row's pixels at cols 2, 3, 4 (in the rectangle) are all 3 px from
    # background, so the centre is a seeded choice among three.
    truth = rect((9, 11), (2, 7), (2, 9))
    tied = {(4, 4), (5, 4), (6, 4)}
    picks = {tuple(center_point(truth, rng(seed)).tolist()) for seed in range(30)}
    assert picks <= tied and len(picks) > 1
    for seed in range(10):
        np.testing.assert_array_equal(center_point(truth, rng(seed)), center_point(truth, rng(seed)))


def test_center_touching_image_border_counts_border_as_background():
    truth = rect((5, 12), (0, 5), (0, 12))  # the whole height: padding makes row -1 and row 5 background
    x, y = center_point(truth, rng())
    assert y == 2 and 2 <= x <= 9


def test_center_and_iter_prompts_are_one_positive_point():
    truth = rect((9, 9), (2, 7), (1, 6))
    for mode in ("center", "iter4"):
        prompt = initial_prompt(mode, truth, rng())
        assert prompt.box is None
        assert prompt.points.dtype == np.float32 and prompt.points.tolist() == [[3, 4]]
        assert prompt.labels.dtype == np.int32 and prompt.labels.tolist() == [1]
    box_iter = initial_prompt("box+iter3", truth, rng())
    assert box_iter.box.tolist() == [1, 2, 5, 6] and len(box_iter.points) == 0


def test_random_points_inside_distinct_reproducible():
    truth = np.zeros((30, 30), dtype=bool)
    truth[5:9, 3:7] = True
    truth[20, 20:25] = True  # a second part: non-contiguous objects stay one object
    for seed in range(50):
        prompt = initial_prompt("random3", truth, rng(seed))
        pts = prompt.points.astype(int)
        assert pts.shape == (3, 2)
        assert truth[pts[:, 1], pts[:, 0]].all()  # (x, y) = (col, row)
        assert len({tuple(p) for p in pts.tolist()}) == 3
        assert prompt.labels.tolist() == [1, 1, 1]
        np.testing.assert_array_equal(prompt.points, initial_prompt("random3", truth, rng(seed)).points)
    assert not np.array_equal(random_points(truth, 3, rng(1)), random_points(truth, 3, rng(2)))


def test_random_points_on_tiny_object_takes_every_pixel_once():
    truth = np.zeros((4, 4), dtype=bool)
    truth[1, 1] = truth[2, 3] = True
    pts = random_points(truth, 5, rng())
    assert sorted(pts.tolist()) == [[1, 1], [3, 2]]


def test_empty_mask_raises():
    for mode in ("box", "center", "random1", "jitter"):
        with pytest.raises(InputError, match="empty"):
            initial_prompt(mode, np.zeros((5, 5), dtype=bool), rng())


# ---------------------------------------------------------------- corrective clicks


def test_next_click_in_missed_block_is_positive():
    truth = rect((14, 14), (2, 12), (2, 12))  # 10x10 square
    pred = truth.copy()
    pred[4:8, 3:9] = False  # misses a 4x6 block
    # 2 px from the block's edge: the middle 2 rows x 4 cols of the block tie; the click is one of them
    tied = {(x, y) for y in (5, 6) for x in (4, 5, 6, 7)}
    for seed in range(10):
        xy, label = next_click(pred, truth, rng(seed))
        assert xy.dtype == np.float32
        assert tuple(xy.astype(int).tolist()) in tied
        assert label == 1
    pred = truth.copy()
    pred[4:9, 3:8] = False  # a 5x5 block has a unique centre
    xy, label = next_click(pred, truth, rng())
    assert (xy.tolist(), label) == ([5, 6], 1)


def test_next_click_in_false_positive_blob_is_negative():
    truth = rect((16, 16), (2, 9), (2, 9))
    pred = truth.copy()
    pred[11:16, 10:15] = True  # 5x5 blob at the bottom border: rows 11..15, cols 10..14
    xy, label = next_click(pred, truth, rng())
    # centre row 13, col 12: 3 px from the truth-free rows/cols around it and from the padding row 16
    assert (xy.tolist(), label) == ([12, 13], 0)


def test_next_click_picks_the_larger_error_and_none_when_exact():
    truth = rect((20, 20), (2, 12), (2, 12))
    pred = truth.copy()
    pred[3:10, 3:10] = False  # 7x7 miss (depth 4) beats a 3x3 false positive (depth 2)
    pred[15:18, 15:18] = True
    xy, label = next_click(pred, truth, rng())
    assert (xy.tolist(), label) == ([6, 6], 1)
    assert next_click(truth, truth, rng()) is None
    with pytest.raises(InputError, match="does not match"):
        next_click(truth[:5], truth, rng())


# ---------------------------------------------------------------- interactive loop


class ScriptedModel:
    """A stand-in predictor returning preset masks in order and recording the mask input it was given."""

    def __init__(self, masks):
        self.masks = list(masks)
        self.calls: list[tuple[Prompt, np.ndarray | None]] = []

    def __call__(self, prompt, mask_input):
        step = len(self.calls)
        self.calls.append((prompt, mask_input))
        logits = np.full((4, 4), float(step))  # low-res logits tagged with the call number
        return self.masks[min(step, len(self.masks) - 1)], logits, 0.5 + 0.1 * step


def interactive_case():
    truth = rect((16, 16), (2, 13), (2, 13))  # 11x11 square: unique centre (7, 7)
    miss = truth.copy()
    miss[3:8, 3:8] = False  # 5x5 missed block, centre (5, 5)
    extra = truth.copy()
    extra[13:16, 13:16] = True  # 3x3 false positive at the corner, centre (14, 14)
    return truth, [miss, extra, truth]


def test_run_interactive_iter_loop_and_mask_input_handoff():
    truth, masks = interactive_case()
    model = ScriptedModel(masks)
    steps = run_interactive("iter5", truth, model, rng())
    assert len(steps) == 5
    assert len(model.calls) == 3  # the third prediction is exact: no click is left to give
    assert model.calls[0][1] is None
    assert model.calls[1][1][0, 0] == 0.0 and model.calls[2][1][0, 0] == 1.0
    assert steps[0].prompt.points.tolist() == [[7, 7]]
    assert steps[1].prompt.points.tolist() == [[7, 7], [5, 5]]
    assert steps[1].prompt.labels.tolist() == [1, 1]
    assert steps[2].prompt.points.tolist() == [[7, 7], [5, 5], [14, 14]]
    assert steps[2].prompt.labels.tolist() == [1, 1, 0]
    assert [s.predicted_iou for s in steps] == pytest.approx([0.5, 0.6, 0.7, 0.7, 0.7])
    assert [s.repeated for s in steps] == [False, False, False, True, True]
    np.testing.assert_array_equal(steps[4].mask, truth)
    assert steps[0].prompt is not steps[1].prompt and len(steps[0].prompt.points) == 1


def test_run_interactive_box_iter_starts_with_box_alone():
    truth, masks = interactive_case()
    model = ScriptedModel(masks)
    steps = run_interactive(parse_mode("box+iter2"), truth, model, rng())
    assert len(steps) == 3
    assert steps[0].prompt.box.tolist() == [2, 2, 12, 12] and len(steps[0].prompt.points) == 0
    assert steps[2].prompt.box.tolist() == [2, 2, 12, 12]
    assert steps[2].prompt.points.tolist() == [[5, 5], [14, 14]]
    assert steps[2].prompt.labels.tolist() == [1, 0]
    assert model.calls[0][1] is None and model.calls[2][1][0, 0] == 1.0


def test_run_interactive_single_step_for_plain_modes():
    truth, masks = interactive_case()
    for mode in ("box", "center", "random3", "jitter"):
        model = ScriptedModel(masks)
        steps = run_interactive(mode, truth, model, rng())
        assert len(steps) == 1 and len(model.calls) == 1 and model.calls[0][1] is None
        np.testing.assert_array_equal(steps[0].mask, masks[0])


def test_run_interactive_is_deterministic_per_seed():
    truth = rect((12, 12), (1, 8), (2, 9))  # 7x7 square
    rough = rect((12, 12), (1, 5), (2, 9))  # misses rows 5..7: ties in the error region

    def half(prompt, mask_input):
        return rough, None, 0.0

    first = run_interactive("iter3", truth, half, object_rng(7, 0, 3))
    again = run_interactive("iter3", truth, half, object_rng(7, 0, 3))
    assert [s.prompt.points.tolist() for s in first] == [s.prompt.points.tolist() for s in again]


def test_object_rng():
    a = object_rng(42, 3, 17).integers(1_000_000, size=5)
    np.testing.assert_array_equal(a, np.random.default_rng([42, 3, 17]).integers(1_000_000, size=5))
    assert not np.array_equal(a, object_rng(42, 3, 18).integers(1_000_000, size=5))
    with pytest.raises(InputError, match="non-negative"):
        object_rng(-1, 0)


def test_prompt_with_click_makes_a_new_prompt():
    base = Prompt(box=[1, 2, 3, 4])
    clicked = base.with_click((5, 6), 0)
    assert len(base.points) == 0
    assert clicked.box.tolist() == [1, 2, 3, 4] and clicked.box is not base.box
    assert clicked.points.tolist() == [[5, 6]] and clicked.labels.tolist() == [0]
    assert clicked.as_dict() == {"box": [1, 2, 3, 4], "points": [[5, 6]], "labels": [0]}
    with pytest.raises(InputError, match="2 points but 1 labels"):
        Prompt(points=[[0, 0], [1, 1]], labels=[1])


def test_stack_prompts_pads_points_with_minus_one():
    from medsamkit.prompts import stack_prompts

    a = Prompt(box=[1, 2, 3, 4], points=[[5, 6]], labels=[1])
    b = Prompt(box=[0, 0, 9, 9], points=[[1, 1], [2, 2]], labels=[0, 1])
    out = stack_prompts([a, b])
    np.testing.assert_array_equal(out["boxes"], [[1, 2, 3, 4], [0, 0, 9, 9]])
    np.testing.assert_array_equal(out["point_labels"], [[1, -1], [0, 1]])
    np.testing.assert_array_equal(out["points"][0], [[5, 6], [0, 0]])
    assert set(stack_prompts([Prompt(box=[1, 2, 3, 4])])) == {"boxes"}
    assert set(stack_prompts([Prompt(points=[[1, 1]], labels=[1])])) == {"points", "point_labels"}
