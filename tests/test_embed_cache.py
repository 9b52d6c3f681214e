"""Embedding cache: keys, hits, detection and recomputation of damaged entries, dataset precomputation."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from medsamkit.core.tiling import tile_size_for
from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.embedding.precompute import EmbedConfig, embed_dataset, image_windows
from medsamkit.io.datasets import open_dataset
from medsamkit.models import load_model


@pytest.fixture(scope="module")
def nuclei():
    """A real 128x128 crop of the builtin DSB nuclei image with its instance labels."""
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    return case.image[:128, :128].copy(), case.label[:128, :128].copy()


@pytest.fixture(scope="module")
def reference(predictor, nuclei):
    return predictor.embed(nuclei[0])


def test_key_depends_on_every_input(tmp_path, predictor, nuclei):
    image = nuclei[0]
    base = EmbeddingCache(tmp_path, predictor.model).key(image)
    assert len(base) == 64 and base == EmbeddingCache(tmp_path, predictor.model).key(image.copy())
    flipped = image.copy()
    flipped[5, 7] += 1
    variants = [flipped, image.astype(np.float32), image[:, :127], image.T.copy()]
    keys = {EmbeddingCache(tmp_path, predictor.model).key(v) for v in variants}
    assert base not in keys and len(keys) == len(variants)
    other = load_model("litemedsam")
    other.preprocessing = replace(other.preprocessing, interpolation="bilinear")
    assert EmbeddingCache(tmp_path, other).key(image) != base  # preprocessing is part of the key
    changed = load_model("litemedsam")
    with torch.no_grad():
        changed.image_encoder.neck[1].bias.add_(1e-3)
    assert EmbeddingCache(tmp_path, changed).key(image) != base  # so are the encoder weights


def test_miss_then_hit_gives_the_same_embedding(tmp_path, predictor, nuclei, reference):
    cache = EmbeddingCache(tmp_path, predictor.model)
    first = cache.get_or_compute(predictor, nuclei[0])
    second = cache.get_or_compute(predictor, nuclei[0])
    assert cache.stats == {"hits": 1, "computed": 1, "discarded": 0}
    assert torch.equal(first.features, reference.features) and torch.equal(second.features, reference.features)
    assert second.original_size == (128, 128) and second.input_size == (256, 256)
    assert [p.name for p in tmp_path.iterdir()] == [f"{cache.key(nuclei[0])}.npz"]  # no temp file left


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_bytes(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _garbage(path):
    path.write_bytes(b"not an npz file at all")


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes, _garbage])
def test_damaged_entry_is_detected_deleted_and_recomputed(tmp_path, predictor, nuclei, reference, damage, caplog):
    cache = EmbeddingCache(tmp_path, predictor.model)
    cache.save(cache.key(nuclei[0]), reference)
    path = cache.path(cache.key(nuclei[0]))
    damage(path)
    with caplog.at_level(logging.WARNING, logger="medsamkit.embed"):
        got = cache.get_or_compute(predictor, nuclei[0])
    assert cache.stats == {"hits": 0, "computed": 1, "discarded": 1}
    assert str(path) in caplog.text and "recomputing" in caplog.text
    assert torch.equal(got.features, reference.features)
    assert cache.load(cache.key(nuclei[0])) is not None  # the rewritten entry is valid


def test_entry_of_another_key_or_shape_is_not_used(tmp_path, predictor, nuclei, reference, caplog):
    cache = EmbeddingCache(tmp_path, predictor.model)
    key = cache.key(nuclei[0])
    other_key = cache.key(nuclei[0][:64])
    cache.save(other_key, reference)
    shutil.copy(cache.path(other_key), cache.path(key))  # an entry renamed into the wrong place
    with caplog.at_level(logging.WARNING, logger="medsamkit.embed"):
        assert cache.load(key) is None
    assert "another key" in caplog.text and not cache.path(key).exists()
    small = type(reference)(reference.features[:, :, :32, :32].contiguous(), (128, 128), (256, 256))
    cache.save(key, small)
    assert cache.load(key) is None and cache.stats["discarded"] == 2


def test_embed_dataset_writes_index_and_resumes(tmp_path, predictor, nuclei):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    image, label = nuclei
    u8 = (255 * (image - image.min()) / (image.max() - image.min())).astype(np.uint8)
    for name, rows in (("a", slice(0, 64)), ("b", slice(64, 128))):
        Image.fromarray(u8[rows]).save(root / "images" / f"{name}.png")
        Image.fromarray(label[rows].astype(np.uint16)).save(root / "labels" / f"{name}.png")
    cfg = EmbedConfig(data=str(root), out=str(tmp_path / "cache"), show_progress=False)
    first = embed_dataset(cfg, predictor)
    assert (first["images"], first["tiles"], first["computed"], first["hits"]) == (2, 2, 1 + 1, 0)
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert set(index["images"]) == {"a", "b"}
    assert list(index["images"]["a"]["tiles"]) == ["0:0:64:128"]
    again = embed_dataset(cfg, predictor)
    assert (again["computed"], again["hits"]) == (0, 2)


@pytest.mark.parametrize(("shape", "requested", "expected"), [
    ((1000, 1000), None, 256), ((512, 512), None, 0), ((513, 200), None, 256), ((1000, 1000), 0, 0),
    ((300, 300), 128, 128),
])
def test_tiling_rule_matches_evaluate(shape, requested, expected):
    assert tile_size_for(shape, requested, 256) == expected


def test_windows_cover_the_grid():
    label = np.zeros((600, 600), np.uint16)
    label[10:30, 10:30] = 1
    windows = image_windows(label, "instance", 256, 64)
    # grid starts 0, 192, 344 (last tile flush with the border) on each axis: 9 windows, no extra tiles
    assert len(windows) == 9 and (0, 0, 256, 256) in windows and (344, 344, 600, 600) in windows


def test_evaluate_reads_a_cache_built_with_another_tile_overlap(tmp_path, predictor):
    """Bug: `embed --tile-overlap` existed on no sibling verb, so a cache built with overlap 32 was never read
    by evaluate (fixed 64). Now the same flag reaches evaluate's tile plan: nothing is re-embedded."""
    from medsamkit.evaluation.config import EvaluateConfig
    from medsamkit.evaluation.run import evaluate

    cache = tmp_path / "cache"
    embed_dataset(EmbedConfig(data="builtin:dsb-nuclei", out=str(cache), tile_size=256, tile_overlap=32,
                              show_progress=False), predictor)
    built = sorted(p.name for p in cache.glob("*.npz"))
    assert len(built) >= 4
    cfg = EvaluateConfig(data="builtin:dsb-nuclei", out=str(tmp_path / "ev"), prompts="box", max_objects=12,
                         tile_size=256, tile_overlap=32, baseline=False, figures=False, cache=str(cache),
                         show_progress=False)
    evaluate(cfg, predictor)
    assert sorted(p.name for p in cache.glob("*.npz")) == built  # every tile came from the cache
    cfg64 = EvaluateConfig(**{**cfg.__dict__, "out": str(tmp_path / "ev64"), "tile_overlap": 64})
    evaluate(cfg64, predictor)
    assert len(list(cache.glob("*.npz"))) > len(built)  # another overlap is another plan: new tiles
