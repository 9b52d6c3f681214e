"""The per-object view rule: large objects keep the whole image, small ones get a native tile with context,
explicit tile sizes still tile; embed precomputes every window evaluate uses (real and constructed labels)."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.core.objects import extract_objects
from medsamkit.core.tiling import WHOLE_VIEW_MIN_SIDE, AutoTile, model_scale_side, plan_tiles, tile_size_for
from medsamkit.embedding.precompute import image_windows
from medsamkit.io.builtin import open_builtin
from medsamkit.io.images import read_label

INPUT = 256  # LiteMedSAM's input size


def _view_of(plan: dict, obj) -> tuple[int, int, int, int]:
    (window,) = [w for w, members in plan.items() if any(m.label == obj.label for m in members)]
    return window


def _assert_tile_with_context(window, obj, shape):
    """A native tile (not the whole image) holding the object and half its side of context where the image
    allows it."""
    y0, x0, y1, x1 = window
    assert (y0, x0, y1, x1) != (0, 0, shape[0], shape[1])
    assert y1 - y0 >= INPUT or y1 - y0 == shape[0]
    rows, cols = obj.slices
    ctx = max(8, max(rows.stop - rows.start, cols.stop - cols.start) // 2)
    assert y0 <= max(rows.start - ctx, 0) and x0 <= max(cols.start - ctx, 0)
    assert y1 >= min(rows.stop + ctx, shape[0]) and x1 >= min(cols.stop + ctx, shape[1])
    assert obj.mask_in(window).sum() == obj.area


@pytest.fixture(scope="module")
def constructed():
    """A 2048 px label map: one 600 px object (75 px at model scale) and one 20 px object (2.5 px)."""
    label = np.zeros((2048, 2048), np.uint16)
    label[100:700, 900:1500] = 1
    label[1500:1520, 300:320] = 2
    return label, list(extract_objects(label, "instance"))


def test_large_object_whole_small_object_tiled(constructed):
    label, (large, small) = constructed
    tile = tile_size_for(label.shape, None, INPUT)
    assert isinstance(tile, AutoTile) and tile == INPUT
    plan = plan_tiles([large, small], label.shape, tile, 64)
    assert _view_of(plan, large) == (0, 0, 2048, 2048)
    _assert_tile_with_context(_view_of(plan, small), small, label.shape)


def test_explicit_tile_still_tiles(constructed):
    label, (large, small) = constructed
    plan = plan_tiles([large, small], label.shape, tile_size_for(label.shape, 256, INPUT), 64)
    assert (0, 0, 2048, 2048) not in plan
    y0, x0, y1, x1 = _view_of(plan, large)
    assert (y1 - y0, x1 - x0) == (600, 600)  # the smallest square holding it, as before
    assert tile_size_for(label.shape, 0, INPUT) == 0
    assert list(plan_tiles([large, small], label.shape, 0, 64)) == [(0, 0, 2048, 2048)]


def test_threshold_decides_at_model_scale(constructed):
    label, (large, small) = constructed
    assert model_scale_side(large, label.shape, INPUT) == pytest.approx(75.0)
    assert model_scale_side(small, label.shape, INPUT) == pytest.approx(2.5)
    strict = plan_tiles([large], label.shape, tile_size_for(label.shape, None, INPUT, min_side=80.0), 64)
    assert (0, 0, 2048, 2048) not in strict  # below a higher threshold the large object is tiled too


def test_dsb_nuclei_on_a_large_mosaic_get_native_tiles():
    """builtin:dsb-nuclei as a 2x2 mosaic (1024 px): nuclei are 3-9 px at model scale, so all are tiled."""
    case = next(open_builtin("dsb-nuclei").cases())
    assert tile_size_for(case.label.shape, None, INPUT) == 0  # 512 px: at most 2x the input, whole image
    ids = case.label.astype(np.int64)
    mosaic = np.block([[ids, np.where(ids > 0, ids + 1000, 0)],
                       [np.where(ids > 0, ids + 2000, 0), np.where(ids > 0, ids + 3000, 0)]])
    objs = list(extract_objects(mosaic, "instance", 20))
    plan = plan_tiles(objs, mosaic.shape, tile_size_for(mosaic.shape, None, INPUT), 64)
    assert (0, 0, 1024, 1024) not in plan
    for obj in objs:
        _assert_tile_with_context(_view_of(plan, obj), obj, mosaic.shape)


def test_monuseg_nuclei_tiled_and_glas_glands_whole(monuseg_root):
    lab = read_label(sorted((monuseg_root / "test" / "labels").iterdir())[0])
    objs = list(extract_objects(lab, "instance", 20))
    plan = plan_tiles(objs, lab.shape, tile_size_for(lab.shape, None, INPUT), 64)
    assert sum(len(v) for v in plan.values()) == len(objs) and (0, 0, *lab.shape) not in plan
    for obj in objs[:: max(len(objs) // 50, 1)]:
        _assert_tile_with_context(_view_of(plan, obj), obj, lab.shape)
    glas = monuseg_root.parent / "glas" / "testA" / "labels"
    if not glas.is_dir():
        pytest.skip("GlaS test A not found beside MoNuSeg")
    lab = read_label(glas / "testA_1.png")
    glands = list(extract_objects(lab, "instance", 20))
    plan = plan_tiles(glands, lab.shape, tile_size_for(lab.shape, None, INPUT), 64)
    whole = plan.get((0, 0, *lab.shape), [])
    large = [g for g in glands if model_scale_side(g, lab.shape, INPUT) >= WHOLE_VIEW_MIN_SIDE]
    assert large and {g.label for g in whole} == {g.label for g in large}


def test_embed_precomputes_every_window_evaluate_uses(constructed):
    label, objs = constructed
    windows = image_windows(label, "instance", tile_size_for(label.shape, None, INPUT), 64)
    assert set(plan_tiles(objs, label.shape, tile_size_for(label.shape, None, INPUT), 64)) <= set(windows)


def test_evaluate_prompts_each_object_in_its_view(tmp_path, predictor):
    """builtin:dsb-nuclei upscaled 4x (2048 px): nuclei of 6-17 px at model scale, viewed by the rule."""
    import csv

    from medsamkit.evaluation.config import EvaluateConfig
    from medsamkit.evaluation.run import evaluate
    from medsamkit.io.images import write_mask

    case = next(open_builtin("dsb-nuclei").cases())
    big = np.kron(case.label.astype(np.uint16), np.ones((4, 4), np.uint16))
    image = np.kron(case.image / case.image.max() * 255, np.ones((4, 4)))
    write_mask(tmp_path / "data" / "images" / "big.png", image)
    write_mask(tmp_path / "data" / "labels" / "big.png", big)
    cfg = EvaluateConfig(data=str(tmp_path / "data"), out=str(tmp_path / "ev"), prompts="box", max_objects=8,
                         baseline=False, figures=False, show_progress=False)
    summary = evaluate(cfg, predictor)
    with open(tmp_path / "ev" / "per_object.csv") as fh:
        rows = list(csv.DictReader(fh))
    objs = {o.label: o for o in extract_objects(big, "instance", 20)}
    views = set()
    for r in rows:
        obj, window = objs[int(r["object"])], tuple(int(v) for v in r["tile"].split(":"))
        whole = model_scale_side(obj, big.shape, INPUT) >= WHOLE_VIEW_MIN_SIDE
        views.add(whole)
        assert (window == (0, 0, 2048, 2048)) == whole
        if not whole:
            _assert_tile_with_context(window, obj, big.shape)
    assert views == {True, False} and summary["tiles"] == len({r["tile"] for r in rows})
