"""One image's annotation state and its files: painting order, undo/redo restoring exactly the pixels a
change touched, label maps loaded as objects, class maps, ids that are safe file names."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medsamkit.annotate.session.items import ItemSource, safe_id
from medsamkit.annotate.session.state import ImageAnnotation
from medsamkit.core.errors import InputError
from medsamkit.io.annotations import AnnotationFolder


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_commits_paint_on_top_and_undo_restores_the_covered_pixels():
    state = ImageAnnotation.empty((40, 40))
    a = state.commit(_disc((40, 40), 15, 15, 8), {"class": "a"})
    before = state.label.copy()
    b = state.commit(_disc((40, 40), 20, 20, 8), {"class": "b"})
    assert (a["id"], b["id"]) == (1, 2)
    assert state.records[1]["area"] < a["area"] and state.records[2]["area"] == b["area"]
    assert (state.label == 2).sum() == _disc((40, 40), 20, 20, 8).sum()
    state.undo()
    assert np.array_equal(state.label, before) and 2 not in state.records
    state.redo()
    state.delete(1)
    assert not (state.label == 1).any() and 1 not in state.records
    state.update(2, **{"class": "c", "hidden": True})
    assert state.records[2]["class"] == "c" and state.records[2]["hidden"]
    state.undo()
    state.undo()
    assert state.records[2]["class"] == "b" and state.records[1]["area"] == (state.label == 1).sum() > 0
    assert state.next_id == 3
    state.commit(_disc((40, 40), 5, 5, 3), {})
    assert state.redo() is None  # a new change drops what was undone


def test_empty_and_mismatched_masks_are_refused():
    state = ImageAnnotation.empty((10, 10))
    with pytest.raises(InputError, match="empty"):
        state.commit(np.zeros((10, 10), bool), {})
    with pytest.raises(InputError, match="shape"):
        state.commit(np.ones((5, 5), bool), {})
    with pytest.raises(KeyError):
        state.delete(4)


def test_label_maps_load_as_objects_and_large_ids_are_renumbered():
    label = np.zeros((6, 6), np.int64)
    label[0, :2], label[3:, 3:], label[5, 0] = 70000, 5, 90000
    state = ImageAnnotation.from_label_map(label, default_class="x")
    assert sorted(state.records) == [1, 2, 3] and state.label.dtype == np.uint16
    assert [r["area"] for r in state.objects()] == [9, 2, 1] and state.records[1]["class"] == "x"
    assert state.class_map(["x"]).max() == 1 and state.class_map(["y"]) is None


def test_store_round_trip_keeps_objects_painted_over(tmp_path):
    state = ImageAnnotation.empty((20, 20))
    state.commit(_disc((20, 20), 10, 10, 3), {"class": "a", "prompt": {"box": [7, 7, 13, 13]}})
    state.commit(_disc((20, 20), 10, 10, 6), {"class": "b"})
    files = AnnotationFolder(tmp_path / "out")
    files.write_image("img", "img.png", state.label, state.objects(), ["a", "b"], state.class_map(["a", "b"]), None)
    saved = files.read_image("img", (20, 20))
    loaded = ImageAnnotation.restore(saved, "img.png")
    assert np.array_equal(loaded.label, state.label) and loaded.objects() == state.objects()
    assert loaded.records[1]["area"] == 0
    meta = json.loads((tmp_path / "out" / "img.json").read_text())
    assert meta["objects"][0]["prompt"] == {"box": [7, 7, 13, 13]}
    assert np.asarray(Image.open(tmp_path / "out" / "img.classes.png")).max() == 2
    assert not list((tmp_path / "out").glob("*.tmp"))
    with pytest.raises(InputError, match="not an annotation"):
        files.read_image("img", (21, 20))
    with pytest.raises(InputError):
        files.inside("../escape")


def test_ids_are_safe_unique_file_names(tmp_path):
    taken: set[str] = set()
    assert safe_id("../../etc/passwd", taken) == "etc_passwd"
    assert safe_id("a b", taken) == "a_b" and safe_id("a?b", taken) == "a_b-2"
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="x.png"):
        ItemSource(tmp_path)
    with pytest.raises(InputError, match="no images"):
        ItemSource(tmp_path / "labels") if (tmp_path / "labels").mkdir() is None else None
