"""Model registry and checkpoint loading: bundled weights checksum, strict loading, clear mismatch errors."""

from __future__ import annotations

import pytest
import torch

from medsamkit.core.errors import InputError
from medsamkit.models import MODELS, load_model
from medsamkit.models.checkpoints import read_state_dict, sha256_of
from medsamkit.models.registry import LITEMEDSAM_SHA256, build_sam_vit
from medsamkit.models.sam import Preprocessing


def test_bundled_weights_checksum_and_size(weights_path):
    path = weights_path
    assert path.stat().st_size == 39_370_479
    assert sha256_of(path) == LITEMEDSAM_SHA256


def test_litemedsam_strict_load_param_counts(litemedsam, weights_path):
    counts = litemedsam.count_parameters()
    # docs/facts.md: TinyViT encoder 5.74 M, mask decoder 4.06 M
    assert counts["image_encoder"] == 5_726_740
    assert counts["mask_decoder"] == 4_058_340
    state = read_state_dict(weights_path)
    own = litemedsam.state_dict()
    assert set(state) == set(own)
    assert all(torch.equal(state[k], own[k]) for k in ("image_encoder.neck.0.weight", "mask_decoder.iou_token.weight"))


def test_registry_lists_all_families():
    assert {"litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b"} <= set(MODELS)


def test_unknown_model_is_one_clear_line():
    with pytest.raises(InputError, match="unknown model 'sam_vit_x'; choose one of: litemedsam"):
        load_model("sam_vit_x")


def test_user_model_without_checkpoint():
    with pytest.raises(InputError, match="sam_vit_b: weights are not bundled; pass --checkpoint"):
        load_model("sam_vit_b")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(InputError, match="checkpoint file not found"):
        load_model("sam_vit_b", checkpoint=tmp_path / "nope.pth")


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"this is not a torch file" * 10)
    with pytest.raises(InputError, match=r"garbage.pth: unreadable checkpoint"):
        load_model("medsam_vit_b", checkpoint=bad)


def test_pickled_objects_are_refused(tmp_path):
    # weights_only=True: a checkpoint carrying arbitrary Python objects is not executed
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": Preprocessing(256)}, evil)
    with pytest.raises(InputError, match="unreadable checkpoint"):
        read_state_dict(evil)


def test_checksum_mismatch(tmp_path):
    f = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(2)}, f)
    with pytest.raises(InputError, match="checksum mismatch"):
        read_state_dict(f, expected_sha256="0" * 64)


def test_mismatched_checkpoint_names_keys_and_shapes(weights_path):
    # LiteMedSAM weights given to a SAM ViT-B: decoder keys match, encoder keys/shapes do not
    with pytest.raises(InputError) as err:
        load_model("sam_vit_b", checkpoint=weights_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "checkpoint does not fit sam_vit_b" in msg
    assert "missing keys (image_encoder." in msg and "unexpected keys (image_encoder." in msg
    assert "shape mismatches" in msg and "image_encoder.neck.0.weight (256, 320, 1, 1) vs (256, 768, 1, 1)" in msg


def test_sam_vit_b_loader_roundtrip_with_random_weights(tmp_path):
    """Real loader, randomly initialised weights of the right shapes (no SAM weights ship offline)."""
    torch.manual_seed(0)
    src = build_sam_vit("vit_b", "sam_vit_b", Preprocessing(1024, "longest", "imagenet", "bilinear"))
    assert src.count_parameters()["total"] == 93_735_472  # SAM ViT-B, as published (93.7 M)
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(src.state_dict(), path)
    loaded = load_model("sam_vit_b", checkpoint=path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # MedSAM uses the same architecture with different preprocessing
    med = load_model("medsam_vit_b", checkpoint=path)
    assert med.preprocessing.resize == "square" and med.preprocessing.normalize == "minmax"


@pytest.mark.parametrize("name,params", [("sam_vit_l", 312_342_832), ("sam_vit_h", 641_090_608)])
def test_large_sam_builders_have_published_sizes(name, params):
    with torch.device("meta"):
        model = MODELS[name].build()
    assert model.count_parameters()["total"] == params
