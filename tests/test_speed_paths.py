"""The fast decoder path equals the official SAM MaskDecoder on a real MoNuSeg tile (and is skipped when unsafe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medsamkit.core.objects import extract_objects
from medsamkit.io.images import read_image, read_label
from medsamkit.models.fast_decode import fast_decoder_supported
from medsamkit.predictor import Predictor

LOGIT_TOL = 1e-3  # measured ~5e-5 on 32 boxes: float re-association only
MIN_AGREEMENT = 0.999


@pytest.fixture(scope="module")
def tile(monuseg_root):
    """A 256x256 MoNuSeg crop, its instance boxes (x0,y0,x1,y1) and a predictor holding its embedding."""
    name = sorted((monuseg_root / "test" / "images").iterdir())[0].name
    image = read_image(monuseg_root / "test" / "images" / name)[:256, :256]
    label = read_label(monuseg_root / "test" / "labels" / name)[:256, :256]
    boxes = np.stack([o.box() for o in extract_objects(label, "instance", 20, 0.0)])[:8]
    return image, boxes


@pytest.fixture(scope="module")
def predictor(litemedsam, tile):
    return Predictor(litemedsam).set_image(tile[0], "monuseg tile")


def _both(predictor, **prompts):
    model = predictor.model
    out = {}
    try:
        for fast in (False, True):
            model.use_fast_decoder = fast
            out[fast] = predictor.predict(**prompts)
    finally:
        model.use_fast_decoder = True
    return out[False], out[True]


@pytest.mark.parametrize("case", ["boxes", "multimask", "points", "points+box", "box+mask"])
def test_fast_decoder_equals_official(predictor, tile, case):
    boxes = tile[1]
    pts = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2  # box centres, inside each nucleus box
    kwargs = {
        "boxes": {"boxes": boxes},
        "multimask": {"boxes": boxes, "multimask": True},
        "points": {"points": pts, "point_labels": np.ones((len(boxes), 1))},
        "points+box": {"points": pts, "point_labels": np.ones((len(boxes), 1)), "boxes": boxes},
    }.get(case)
    if kwargs is None:  # second round of an interactive run: box plus the first round's logits
        first = predictor.predict(boxes=boxes)
        kwargs = {"boxes": boxes, "mask_input": first.low_res_logits}
    ref, fast = _both(predictor, **kwargs)
    assert fast.masks.shape == ref.masks.shape == (len(boxes), 3 if case == "multimask" else 1, 256, 256)
    assert np.abs(fast.low_res_logits - ref.low_res_logits).max() < LOGIT_TOL
    assert np.abs(fast.iou - ref.iou).max() < 1e-4
    assert (fast.masks == ref.masks).mean() >= MIN_AGREEMENT
    # a real segmentation, not two equal empty outputs (LiteMedSAM is box-trained: points give little)
    areas = fast.masks[:, 0].sum(axis=(1, 2))
    assert areas.min() > 0 if "box" in case or case == "multimask" else areas.sum() > 0


def test_single_prompt_equals_batch_and_chunks(predictor, tile):
    """A prompt alone, in a batch of 8, or in chunks of 3 gives the same mask (no cross-talk, no lost rows)."""
    boxes = tile[1]
    model = predictor.model
    batch = predictor.predict(boxes=boxes)
    alone = predictor.predict(boxes=boxes[5])
    model.decode_chunk = 3
    try:
        chunked = predictor.predict(boxes=boxes, mask_input=batch.low_res_logits)
    finally:
        model.decode_chunk = 8
    whole = predictor.predict(boxes=boxes, mask_input=batch.low_res_logits)
    assert np.abs(alone.low_res_logits[0] - batch.low_res_logits[5]).max() < LOGIT_TOL
    assert (alone.masks[0] == batch.masks[5]).mean() >= MIN_AGREEMENT
    assert chunked.masks.shape == whole.masks.shape == (8, 1, 256, 256)
    assert np.abs(chunked.low_res_logits - whole.low_res_logits).max() < LOGIT_TOL
    assert (chunked.masks == whole.masks).mean() >= MIN_AGREEMENT


def test_autograd_uses_official_decoder(litemedsam, predictor, tile):
    """With gradients on (fine-tuning), decode runs the official module: bit-identical to calling it."""
    emb = predictor.embedding.features
    box = torch.from_numpy(tile[1][:2])
    with torch.enable_grad():
        low, iou = litemedsam.decode(emb, None, box, None, False)
        sparse, dense = litemedsam.prompt_encoder(points=None, boxes=box, masks=None)
        ref, ref_iou = litemedsam.mask_decoder(emb, litemedsam.prompt_encoder.get_dense_pe(), sparse, dense, False)
    assert torch.equal(low, ref) and torch.equal(iou, ref_iou)


class _WrappedLinear(nn.Module):
    """Stand-in for a LoRA-wrapped projection: the fast path cannot read its weight directly."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)


def test_fast_path_only_for_plain_official_decoder(litemedsam):
    import copy

    dec = litemedsam.mask_decoder
    assert fast_decoder_supported(dec)
    wrapped = copy.deepcopy(dec)
    attn = wrapped.transformer.layers[0].cross_attn_token_to_image
    attn.q_proj = _WrappedLinear(attn.q_proj)
    assert not fast_decoder_supported(wrapped)
    assert not fast_decoder_supported(nn.Identity())
    # every attention of the transformer is checked (they are named, not found by a walk): the last layer's
    # self-attention and the final one too, and an attention replaced by another module
    for where, name in (("layers.1.self_attn", "v_proj"), ("final_attn_token_to_image", "out_proj")):
        wrapped = copy.deepcopy(dec)
        attn = wrapped.transformer.get_submodule(where)
        setattr(attn, name, _WrappedLinear(getattr(attn, name)))
        assert not fast_decoder_supported(wrapped), where
    wrapped = copy.deepcopy(dec)
    wrapped.transformer.layers[1].cross_attn_image_to_token = nn.Identity()
    assert not fast_decoder_supported(wrapped)


def test_window_crops_are_the_tokens_of_the_window():
    """decode_local's crops (slices of the token-major grid) hold, for each window corner, the grid's tokens there,
    laid out (P, C, w, w) as the decoder reads them: the same values as one indexed gather over all windows."""
    from medsamkit.models.local_decode import _crops

    grid = torch.randn(64, 64, 256)
    corners = [[0, 0], [48, 3], [17, 40], [48, 48]]
    ar = torch.arange(16)
    start = torch.tensor(corners)
    gathered = grid[(start[:, 1, None] + ar)[:, :, None], (start[:, 0, None] + ar)[:, None, :]].permute(0, 3, 1, 2)
    crops = _crops(grid, corners, 16)
    assert crops.shape == (4, 256, 16, 16)
    assert torch.equal(crops, gathered)
    assert torch.equal(crops[1, :, 2, 5], grid[3 + 2, 48 + 5])  # token (x 53, y 5): row y, column x


@pytest.mark.parametrize("with_mask", [False, True])
def test_fast_decode_all_tokens_equals_official(litemedsam, predictor, tile, with_mask):
    """multimask=None (the ONNX graph): every mask token and IoU, with image tokens shared by all prompts
    (box only) or per prompt (mask input), equals the official decoder's predict_masks."""
    from medsamkit.models.fast_decode import fast_mask_decode

    emb = predictor.embedding.features
    boxes = torch.from_numpy(tile[1][:5] * 1.0).float()
    masks = None
    if with_mask:
        masks = torch.from_numpy(predictor.predict(boxes=tile[1][:5]).low_res_logits)
    pe_enc, dec = litemedsam.prompt_encoder, litemedsam.mask_decoder
    with torch.inference_mode():
        sparse, dense = pe_enc(points=None, boxes=boxes, masks=masks)
        low, iou = fast_mask_decode(dec, emb, pe_enc.get_dense_pe(), sparse, dense if with_mask else dense[:1], None)
        ref, ref_iou = dec.predict_masks(emb, pe_enc.get_dense_pe(), sparse, dense)
    assert low.shape == ref.shape == (5, dec.num_mask_tokens, 256, 256)
    assert (low - ref).abs().max().item() < LOGIT_TOL
    assert (iou - ref_iou).abs().max().item() < 1e-4
    assert ((low > 0) == (ref > 0)).float().mean().item() >= MIN_AGREEMENT
    assert (ref[:, 0] > 0).sum().item() > 0  # real masks, not two equal empty outputs


def test_finetune_decode_all_fast_path_has_the_official_gradients(litemedsam, predictor, tile):
    """Fine-tuning's decode_all runs the re-associated decoder under autograd: outputs and the gradient of
    every decoder weight equal the official predict_masks (k biases, which cannot affect any output, aside)."""
    from medsamkit.training.objective import decode_all

    emb = predictor.embedding.features
    boxes = torch.from_numpy(tile[1][:6] * 1.0).float()
    dec = litemedsam.mask_decoder
    weights = torch.linspace(-1, 1, 6 * 4 * 256 * 256).view(6, 4, 256, 256)
    out, grads = {}, {}
    params = [p for p in dec.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        for fast in (True, False):
            litemedsam.use_fast_decoder = fast
            dec.zero_grad()
            with torch.enable_grad():
                low, iou, _ = decode_all(litemedsam, emb, None, boxes, None)
                ((low.sigmoid() * weights).mean() + iou.square().sum()).backward()
            out[fast] = (low.detach(), iou.detach())
            grads[fast] = {n: p.grad.clone() for n, p in dec.named_parameters() if p.grad is not None}
    finally:
        litemedsam.use_fast_decoder = True
        dec.zero_grad()
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    assert out[True][0].shape == out[False][0].shape == (6, 4, 256, 256)
    assert (out[True][0] - out[False][0]).abs().max().item() < LOGIT_TOL
    assert (out[True][1] - out[False][1]).abs().max().item() < 1e-4
    scale = max(g.abs().max().item() for g in grads[False].values())
    compared = 0
    for name, ref in grads[False].items():
        if name.endswith("k_proj.bias"):
            continue  # mathematically zero (softmax ignores a shift of all scores); absent on the fast path
        assert name in grads[True], name
        tol = 1e-3 * max(ref.abs().max().item(), 1e-3 * scale)
        assert (grads[True][name] - ref).abs().max().item() <= tol, name
        compared += 1
    assert compared > 100 and scale > 0


def test_single_prompt_full_and_window_decode_equal_official(predictor, tile):
    """One prompt takes the per-prompt products (no image-token projections) on the whole embedding and on a
    window: both equal the official decoder."""
    from medsamkit.models.local_decode import decode_local

    model, emb = predictor.model, predictor.embedding.features
    box = torch.from_numpy(tile[1][2:3] * 1.0).float()
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
        ref, ref_iou = model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, False)
        fast, iou = model.decode(emb, None, box, None, False)
    local, local_iou, origin = decode_local(model, emb, box, None, emb.shape[-1], False)
    assert origin.tolist() == [[0, 0]]
    for low, q in ((fast, iou), (local, local_iou)):
        assert (low - ref).abs().max().item() < LOGIT_TOL and (q - ref_iou).abs().max().item() < 1e-4
    assert (ref > 0).sum().item() > 0


def test_dense_pe_is_cached_per_weights(litemedsam):
    """The cached positional encoding equals the prompt encoder's, and new weights (load_state_dict) renew it."""
    enc = litemedsam.prompt_encoder
    gauss = enc.pe_layer.positional_encoding_gaussian_matrix
    saved = gauss.clone()
    try:
        with torch.inference_mode():
            first = litemedsam.dense_pe()
            assert torch.equal(first, enc.get_dense_pe()) and litemedsam.dense_pe() is first
            assert first[0].permute(1, 2, 0).is_contiguous()  # token-major
        enc.load_state_dict({**enc.state_dict(), "pe_layer.positional_encoding_gaussian_matrix": saved * 2})
        with torch.inference_mode():
            renewed = litemedsam.dense_pe()
            assert torch.equal(renewed, enc.get_dense_pe()) and not torch.equal(renewed, first)
    finally:
        enc.load_state_dict({**enc.state_dict(), "pe_layer.positional_encoding_gaussian_matrix": saved})
    with torch.inference_mode():
        assert torch.equal(litemedsam.dense_pe(), first)


def test_token_major_copy_follows_the_embedding():
    """The kept token-major copy is the last embedding's, renewed for another tensor or an in-place change."""
    from medsamkit.models.sam import token_major

    a = torch.randn(1, 256, 8, 8)
    ta = token_major(a)
    assert torch.equal(ta, a) and ta[0].permute(1, 2, 0).is_contiguous() and token_major(a) is ta
    a.mul_(2)
    assert torch.equal(token_major(a), a)
    b = a.clone()
    b[0, 0, 0, 0] = 7.0
    assert token_major(b)[0, 0, 0, 0].item() == 7.0
    assert token_major(ta) is ta  # already token-major: used as it is


@pytest.mark.parametrize("stride", [2, 4])
def test_sampled_decode_forms_exactly_every_stride_th_logit(predictor, tile, stride):
    """The click search ranks on sampled logits: the strided upscaling gives the full decoders' logits at
    pixels s*i + s//2 (whole embedding, windows, and the official modules' path), corners in sampled pixels."""
    from medsamkit.models.fast_decode import sample_logits
    from medsamkit.models.local_decode import decode_local

    model, emb = predictor.model, predictor.embedding.features
    boxes = torch.from_numpy(tile[1][:4] * 1.0).float()
    with torch.inference_mode():
        full, iou = model.decode(emb, None, boxes, None, False)
        part, part_iou = model.decode(emb, None, boxes, None, False, stride)
        win, _, origin = decode_local(model, emb, boxes, None, 16, False)
        win_part, _, part_origin = decode_local(model, emb, boxes, None, 16, False, stride)
        model.use_fast_decoder = False
        try:
            official, _ = model.decode(emb, None, boxes, None, False, stride)
        finally:
            model.use_fast_decoder = True
    m = model.mask_input_size[0]
    assert part.shape == (4, 1, m // stride, m // stride) and win_part.shape == (4, 1, 64 // stride, 64 // stride)
    assert torch.equal(part_iou, iou)
    assert (part - full[..., stride // 2 :: stride, stride // 2 :: stride]).abs().max().item() < 1e-4
    assert (win_part - sample_logits(win, stride)).abs().max().item() < 1e-4
    assert (official - part).abs().max().item() < LOGIT_TOL
    assert torch.equal(part_origin * stride, origin)
    assert (part > 0).sum().item() > 0


def test_unit_tokens_follow_the_embedding_and_keep_the_token_major_copy():
    """The click search's unit-length tokens are the last embedding's, renewed after an in-place change (they were
    kept by identity alone), and kept beside the decoder's token-major copy, not in its place."""
    from medsamkit.models.sam import token_major
    from medsamkit.prompts.search import token_features

    a = torch.randn(1, 256, 8, 8)
    ta, ua = token_major(a), token_features(a)
    assert torch.allclose(ua.norm(dim=0), torch.ones(8, 8)) and token_features(a) is ua and token_major(a) is ta
    a[0, :, 0, 0] = -a[0, :, 0, 0]
    flipped = token_features(a)
    assert torch.allclose(flipped[:, 0, 0], -ua[:, 0, 0]) and torch.allclose(flipped[:, 1:], ua[:, 1:])
    assert torch.equal(token_major(a), a)


@pytest.mark.parametrize("chunk", [8, 1])
def test_grouped_window_decode_equals_each_size_decoded_alone(predictor, tile, chunk):
    """decode_windows decodes boxes of several window sizes (and the whole embedding) in grouped passes: each box's
    logits and IoU equal its size decoded alone (decode_local, the full decoder) and the official decoder's; with
    a token budget of one whole embedding per pass (chunk 1) the sizes go in several passes, the same answers."""
    from medsamkit.models.local_decode import decode_local, decode_windows

    model, emb = predictor.model, predictor.embedding.features
    boxes = torch.from_numpy(tile[1][:7] * np.tile(predictor.coordinate_scale(), 2)).float()  # nuclei, model px
    windows = np.array([16, 24, 40, 64, 16, 24, 64])
    chunk_before = model.decode_chunk
    try:
        model.decode_chunk = chunk
        grouped = decode_windows(model, emb, boxes, windows)
        model.use_fast_decoder = False
        official = decode_windows(model, emb, boxes, windows)
    finally:
        model.decode_chunk, model.use_fast_decoder = chunk_before, True
    full = [[3, 6]] if chunk == 8 else [[3], [6]]  # one pass holds one whole embedding's tokens at chunk 1
    assert [(low.shape[-1] // 4, idx.tolist()) for idx, low, *_ in grouped] == \
        [(16, [0, 4]), (24, [1, 5]), (40, [2])] + [(64, f) for f in full]
    ref = {int(i): (low[j], iou[j], origin[j]) for idx, low, iou, origin in official for j, i in enumerate(idx)}
    masked = 0
    for idx, low, iou, origin in grouped:
        w = low.shape[-1] // 4
        if w == emb.shape[-1]:
            alone, alone_iou = model.decode(emb, None, boxes[idx], None, False)
        else:
            alone, alone_iou, alone_origin = decode_local(model, emb, boxes[idx], None, w, False)
            assert torch.equal(origin, alone_origin)
        assert (low - alone).abs().max().item() < 1e-4 and (iou - alone_iou).abs().max().item() < 1e-5
        for j, i in enumerate(idx.tolist()):
            assert (low[j] - ref[i][0]).abs().max().item() < LOGIT_TOL
            assert (iou[j] - ref[i][1]).abs().max().item() < 1e-4 and torch.equal(origin[j], ref[i][2])
        masked += (low > 0).flatten(1).any(1).sum().item()
    assert masked >= 5  # real masks, not equal empty outputs
