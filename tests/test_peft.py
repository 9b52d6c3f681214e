"""Adapters and LoRA: exact added-parameter counts, identity at start, frozen weights stay frozen."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from medsamkit.core.errors import InputError
from medsamkit.models.peft import (
    AdaptedAttention,
    LoRALinear,
    add_adapters,
    add_lora,
    encoder_blocks,
    trainable_parameters,
)
from medsamkit.models.sam_modules import sam_modeling
from medsamkit.models.tiny_vit import TinyViT

# LiteMedSAM's TinyViT has attention blocks of width 128 (x2), 160 (x6), 320 (x2).
# adapter, bottleneck b, per block of width C: down C*b + b, up b*C + C  -> 2*C*b + b + C
# LoRA rank r on a Linear(in, out): A r*in + B out*r; qkv is Linear(C, 3C), proj Linear(C, C)
TINYVIT_CASES = [
    ("adapter", {"bottleneck": 8}, 2 * (2 * 128 * 8 + 8 + 128) + 6 * (2 * 160 * 8 + 8 + 160)
     + 2 * (2 * 320 * 8 + 8 + 320)),  # 31632
    ("lora", {"rank": 4, "targets": ("qkv",)}, 2 * 4 * 4 * 128 + 6 * 4 * 4 * 160 + 2 * 4 * 4 * 320),  # 29696
    ("lora", {"rank": 2, "targets": ("qkv", "proj")},
     2 * 2 * 6 * 128 + 6 * 2 * 6 * 160 + 2 * 2 * 6 * 320),  # 22272
]


def _add(kind, encoder, opts):
    if kind == "adapter":
        return add_adapters(encoder, bottleneck=opts["bottleneck"])
    return add_lora(encoder, rank=opts["rank"], alpha=8.0, targets=opts["targets"])


def tiny_sam_vit():
    """SAM's ViT encoder at toy size: 2 blocks of width 48 (block 1 global attention)."""
    m = sam_modeling()
    return m.ImageEncoderViT(img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=4, mlp_ratio=4,
                             out_chans=32, qkv_bias=True, use_rel_pos=True, window_size=2,
                             global_attn_indexes=(1,), norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))


@pytest.mark.parametrize(("kind", "opts", "expected"), TINYVIT_CASES)
def test_tinyvit_counts_and_freezing(kind, opts, expected):
    torch.manual_seed(0)
    enc = TinyViT(img_size=64)
    total_before = sum(p.numel() for p in enc.parameters())
    assert len(encoder_blocks(enc)) == 10
    added = _add(kind, enc, opts)
    assert added == expected
    trainable, total = trainable_parameters(enc)
    assert trainable == expected
    assert total == total_before + expected


@pytest.mark.parametrize(("kind", "opts", "expected"), [
    ("adapter", {"bottleneck": 8}, 2 * (2 * 48 * 8 + 8 + 48)),  # 1648
    ("lora", {"rank": 4, "targets": ("qkv",)}, 2 * 4 * (48 + 144)),  # 1536
    ("lora", {"rank": 1, "targets": ("qkv", "proj")}, 2 * ((48 + 144) + (48 + 48))),  # 576
])
def test_sam_vit_counts_and_identity_at_start(kind, opts, expected):
    torch.manual_seed(0)
    enc = tiny_sam_vit().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = enc(x)
    assert _add(kind, enc, opts) == expected
    assert trainable_parameters(enc)[0] == expected
    with torch.no_grad():
        after = enc(x)
    # zero-initialised up-projection / LoRA B: the wrapped encoder starts as the pretrained one
    assert torch.equal(before, after)


def test_tinyvit_identity_at_start_with_both():
    torch.manual_seed(1)
    enc = TinyViT(img_size=64).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = enc(x)
        add_adapters(enc, 4)
        add_lora(enc, 2, 4.0, ("qkv", "proj"))
        after = enc(x)
    assert torch.equal(before, after)
    blocks = encoder_blocks(enc)
    assert all(isinstance(b.attn, AdaptedAttention) for _, b in blocks)
    assert all(isinstance(b.attn.attn.qkv, LoRALinear) for _, b in blocks)


@pytest.mark.parametrize(("call", "message"), [
    (lambda e: add_lora(e, rank=0), "rank must be >= 1"),
    (lambda e: add_lora(e, targets=("fc1",)), "targets must be among qkv, proj"),
    (lambda e: add_adapters(e, bottleneck=0), "bottleneck must be >= 1"),
    (lambda e: add_adapters(torch.nn.Sequential(torch.nn.Linear(4, 4))), "no transformer blocks"),
])
def test_bad_options(call, message):
    with pytest.raises(InputError, match=message):
        call(TinyViT(img_size=64))


@pytest.mark.parametrize("kind", [pytest.param("adapter", marks=pytest.mark.slow), "lora"])
def test_steps_change_only_peft_weights(kind):
    """Real LiteMedSAM weights, a real dsb-nuclei tile and object: two AdamW steps through the encoder."""
    from medsamkit.core.objects import extract_objects
    from medsamkit.io.datasets import open_dataset
    from medsamkit.models import load_model
    from medsamkit.predictor import as_rgb_float, preprocess
    from medsamkit.prompts import parse_modes
    from medsamkit.training.objective import Objective

    model = load_model("litemedsam")
    opts = {"bottleneck": 16} if kind == "adapter" else {"rank": 4, "targets": ("qkv",)}
    _add(kind, model.image_encoder, opts)
    for p in list(model.prompt_encoder.parameters()) + list(model.mask_decoder.parameters()):
        p.requires_grad_(False)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "adapter" not in k and "lora_" not in k}
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    image, label = case.image[:128, :128], case.label[:128, :128]
    objs = sorted(extract_objects(label, "instance", 20), key=lambda o: -o.area)[:1]
    truths = [o.mask_in((0, 0, 128, 128)) for o in objs]
    x, resized = preprocess(model.preprocessing, as_rgb_float(image))
    objective = Objective(model, parse_modes("box"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = objective(x, False, resized, truths, [], np.random.default_rng(0))
    loss.backward()
    opt.step()
    assert 0 < float(loss.detach()) < 10
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())  # BatchNorm buffers included
    zero_init = [k for k in state if k.endswith(("adapter.up.weight", "lora_b"))]
    assert len(zero_init) == 10  # one per TinyViT attention block
    assert all(state[k].abs().max() > 0 for k in zero_init)  # the zero-initialised halves have moved
