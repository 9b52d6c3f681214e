"""Decoding a prompt on a window of the image embedding around it: the decoder's cost per prompt grows with
the number of image tokens it attends to, so a small object needs only the tokens near it.

Positional encodings are cropped with the embedding, so prompt coordinates stay absolute (model-input frame).
With a window as large as the embedding the result equals the full decoder's; a smaller one gives nearly the
same mask for an object well inside it (everything mode, click search).
"""

from __future__ import annotations

import numpy as np
import torch

from medsamkit.models.fast_decode import (
    DecodeGroup,
    decode_groups,
    fast_decoder_supported,
    fast_mask_decode_chunked,
    sample_logits,
)
from medsamkit.models.sam import SamFamilyModel, token_major


def window_tokens(sides: np.ndarray, factor: float = 2.0, minimum: int = 16) -> np.ndarray:
    """The decoding window (tokens, a multiple of 8) per prompt of ``sides`` (its longer side, in tokens):
    ``factor`` times the side, so the object keeps its context, and at least ``minimum``."""
    return np.maximum(minimum, np.ceil(np.asarray(sides) * factor / 8) * 8).astype(int)


def _window_starts(centres: torch.Tensor, size: int, grid: int) -> torch.Tensor:
    return (torch.round(centres - size / 2)).long().clamp(0, grid - size)


def _official_window_decode(model: SamFamilyModel, src: torch.Tensor, pos: torch.Tensor, sparse: torch.Tensor,
                            no_mask: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The official decoder modules on per-prompt windows (wrapped decoders, e.g. LoRA, take this path)."""
    dec = model.mask_decoder
    src = src + no_mask
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens[None].expand(sparse.shape[0], -1, -1), sparse], dim=1)
    b, c, h, w = src.shape
    hs, src = dec.transformer(src.contiguous(), pos.contiguous(), tokens)
    up = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack(
        [dec.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in range(dec.num_mask_tokens)], dim=1
    )
    b, c, h, w = up.shape
    masks = (hyper @ up.view(b, c, h * w)).view(b, -1, h, w)
    iou = dec.iou_prediction_head(hs[:, 0, :])
    sl = slice(1, None) if multimask else slice(0, 1)
    return masks[:, sl], iou[:, sl]


def _crops(grid: torch.Tensor, corners: list[list[int]], window: int) -> torch.Tensor:
    """The ``window``^2 crops at top-left ``corners`` [[x, y], ...] of a token-major (g, g, C) grid, as (P, C, w, w)
    views over (P, w, w, C) memory."""
    return torch.stack([grid[y : y + window, x : x + window] for x, y in corners]).permute(0, 3, 1, 2)


@torch.inference_mode()
def decode_local(
    model: SamFamilyModel,
    features: torch.Tensor,
    boxes: torch.Tensor | None,
    points: tuple[torch.Tensor, torch.Tensor] | None,
    window: int,
    multimask: bool,
    stride: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode P prompts (model-input frame) each on a ``window``^2-token crop of ``features`` (1,256,g,g).

    Returns low-res logits (P,C,4w,4w), IoU (P,C) and the windows' top-left corners in low-res pixels
    (P, 2) as (x, y). A window is centred on the box (or the positive points) and shifted inside the grid.
    ``stride`` 2 or 4: only every s-th logit per axis (``models.fast_decode.sample_logits``), corners in those units.
    """
    grid = features.shape[-1]
    window = min(window, grid)
    if boxes is not None:
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    else:
        coords, labels = points
        weight = (labels > 0).float()[..., None]
        centres = (coords * weight).sum(1) / weight.sum(1).clamp(min=1)
    sparse, _ = model.prompt_encoder(points=points, boxes=boxes, masks=None)
    src, pos, origin = _window_crops(model, features, centres, window, stride)
    no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    if model.use_fast_decoder and fast_decoder_supported(model.mask_decoder):
        # Same outputs as the official modules, in chunks of about as many image tokens as
        # SamFamilyModel.decode holds at once.
        step = _prompts_per_pass(model, grid, window)
        logits, iou = fast_mask_decode_chunked(model.mask_decoder, src, pos, sparse, no_mask, multimask, step,
                                               stride)
        return logits, iou, origin
    logits, iou = _official_window_decode(model, src, pos, sparse, no_mask, multimask)
    return sample_logits(logits, stride), iou, origin


def _window_crops(model: SamFamilyModel, features: torch.Tensor, centres: torch.Tensor, window: int, stride: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``window``^2-token crops of the embedding and of the positional encoding centred on ``centres`` (P, 2;
    model-input px) and shifted inside the grid, (P,C,w,w) each, and their top-left corners in low-res pixels
    sampled every ``stride`` (P, 2) as (x, y)."""
    grid = features.shape[-1]
    start = _window_starts(centres / (model.preprocessing.input_size / grid), window, grid)  # (P, 2) in tokens
    # Crops copied token-major (each token's C channels one contiguous row), then viewed (P,C,w,w): the
    # decoder's token-major layout is then a view. Each crop is a slice (2-3x faster than one indexed gather).
    corners = start.tolist()
    src = _crops(token_major(features)[0].permute(1, 2, 0), corners, window)
    pos = _crops(model.dense_pe()[0].permute(1, 2, 0), corners, window)
    return src, pos, (start.float() * (model.mask_input_size[0] / grid / stride)).long()


@torch.inference_mode()
def decode_windows(model: SamFamilyModel, features: torch.Tensor, boxes: torch.Tensor, windows: np.ndarray,
                   stride: int = 1) -> list[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Single-mask decode of boxes (P, 4; model-input frame) each on a window of ``windows`` (P,) tokens around
    it (as large as the grid or larger: the whole embedding). Per window size, ascending (split in parts where its
    boxes exceed one pass): the boxes' indices, low-res logits (P_g,1,4w/s,4w/s), IoU (P_g,1) and the windows'
    top-left corners in low-res pixels (P_g, 2).

    With the fast decoder every size goes in one grouped pass (``fast_decode.decode_groups``; passes of about
    as many image tokens as ``SamFamilyModel.decode`` holds at once), else one decode per size.
    """
    grid = features.shape[-1]
    windows = np.minimum(np.asarray(windows), grid)
    sizes = [(int(w), np.nonzero(windows == w)[0]) for w in np.unique(windows)]
    if not (model.use_fast_decoder and fast_decoder_supported(model.mask_decoder)):
        out = []
        for w, idx in sizes:
            if w >= grid:
                low, q = model.decode(features, None, boxes[idx], None, False, stride)
                out.append((idx, low, q, torch.zeros(len(idx), 2, dtype=torch.long)))
            else:
                out.append((idx, *decode_local(model, features, boxes[idx], None, w, False, stride)))
        return out
    no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    out = []
    for group in _passes(model, grid, sizes):
        order = np.concatenate([idx for _, idx in group])
        sparse, _ = model.prompt_encoder(points=None, boxes=boxes[order], masks=None)
        specs, origins = [], []
        for w, idx in group:
            if w >= grid:
                specs.append(DecodeGroup(token_major(features), model.dense_pe(), no_mask, len(idx)))
                origins.append(torch.zeros(len(idx), 2, dtype=torch.long))
            else:
                src, pos, origin = _window_crops(model, features, (boxes[idx, :2] + boxes[idx, 2:]) / 2, w, stride)
                specs.append(DecodeGroup(src, pos, no_mask, len(idx)))
                origins.append(origin)
        decoded = decode_groups(model.mask_decoder, specs, sparse, False, stride)
        out += [(idx, low, q, origin) for (_, idx), (low, q), origin in zip(group, decoded, origins)]
    return out


def _prompts_per_pass(model: SamFamilyModel, grid: int, window: int) -> int:
    """Prompts on ``window``^2-token windows per fast-decoder pass: about as many image tokens as
    ``SamFamilyModel.decode`` holds at once (``decode_chunk`` whole embeddings), at least one."""
    return max(1, model.decode_chunk * grid * grid // (window * window))


def _passes(model: SamFamilyModel, grid: int, sizes: list[tuple[int, np.ndarray]]
            ) -> list[list[tuple[int, np.ndarray]]]:
    """The (window, box indices) of ``sizes`` packed in order into passes of at most ``decode_chunk`` whole
    embeddings of tokens; a size with more boxes than one pass holds is split."""
    budget = model.decode_chunk * grid * grid
    passes: list[list[tuple[int, np.ndarray]]] = []
    used = budget  # tokens in the last pass (none yet: start one)
    for w, idx in sizes:
        step = _prompts_per_pass(model, grid, w)
        for i in range(0, len(idx), step):
            part = idx[i : i + step]
            if used + len(part) * w * w > budget:
                passes.append([])
                used = 0
            passes[-1].append((w, part))
            used += len(part) * w * w
    return passes
