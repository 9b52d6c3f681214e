"""Decoding a prompt on a window of the image embedding around it: the decoder's cost per prompt grows with
the number of image tokens it attends to, so a small object needs only the tokens near it.

Positional encodings are cropped with the embedding, so prompt coordinates stay absolute (model-input frame).
With a window as large as the embedding the result equals the full decoder's; a smaller one gives nearly the
same mask for an object well inside it (everything mode, click search).
"""

from __future__ import annotations

import numpy as np
import torch

from medsamkit.models.sam import (
    SamFamilyModel,
    fast_decoder_supported,
    fast_mask_decode_chunked,
    sample_logits,
    token_major,
)


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
    ``stride`` 2 or 4: only every s-th logit per axis (``models.sam.sample_logits``), corners in those units.
    """
    grid = features.shape[-1]
    window = min(window, grid)
    px_per_token = model.preprocessing.input_size / grid
    if boxes is not None:
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    else:
        coords, labels = points
        weight = (labels > 0).float()[..., None]
        centres = (coords * weight).sum(1) / weight.sum(1).clamp(min=1)
    start = _window_starts(centres / px_per_token, window, grid)  # (P, 2) x, y in tokens
    sparse, _ = model.prompt_encoder(points=points, boxes=boxes, masks=None)
    # Crops copied token-major (each token's C channels one contiguous row), then viewed (P,C,w,w): the
    # decoder's token-major layout is then a view. Each crop is a slice (2-3x faster than one indexed gather).
    corners = start.tolist()
    src = _crops(token_major(features)[0].permute(1, 2, 0), corners, window)
    no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    pos = _crops(model.dense_pe()[0].permute(1, 2, 0), corners, window)
    origin = (start.float() * (model.mask_input_size[0] / grid / stride)).long()
    if model.use_fast_decoder and fast_decoder_supported(model.mask_decoder):
        # Same outputs as the official modules, in chunks of about as many image tokens as
        # SamFamilyModel.decode holds at once.
        step = max(1, model.decode_chunk * grid * grid // (window * window))
        logits, iou = fast_mask_decode_chunked(model.mask_decoder, src, pos, sparse, no_mask, multimask, step,
                                               stride)
        return logits, iou, origin
    logits, iou = _official_window_decode(model, src, pos, sparse, no_mask, multimask)
    return sample_logits(logits, stride), iou, origin
