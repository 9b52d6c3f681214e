"""The SAM-family model as medsamkit uses it: encoder + prompt encoder + mask decoder + preprocessing spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsamkit.models import onednn


@dataclass(frozen=True)
class Preprocessing:
    """How a family turns an image into encoder input (and back).

    resize: "longest" (longest side to input_size, pad bottom/right) or "square" (stretch to a square);
    normalize: "minmax" (per image to [0,1], LiteMedSAM/MedSAM) or "imagenet" (SAM's pixel mean/std on 0-255);
    interpolation: "area" (LiteMedSAM upstream), "bilinear"/"bicubic" (torch), or "medsam" (MedSAM's own
    inference recipe: `medsam_resize` in, `medsam_masks` out).
    """

    input_size: int
    resize: str = "longest"
    normalize: str = "minmax"
    interpolation: str = "area"


def medsam_resize(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """MedSAM's inference recipe up to its min-max step: the image as 8 bits (min-max scaled to 0-255 and
    truncated, as MedSAM's data preparation does, unless it already holds 8-bit values), skimage's
    ``resize(order=3, preserve_range=True, anti_aliasing=True)`` to ``size``, truncated to uint8 again;
    float32 (1, 3, h, w) in 0-255. MedSAM was trained on inputs made this way: a torch bicubic resize moves
    its masks on ~2.5% of pixels."""
    from skimage.transform import resize

    img = np.asarray(image)
    if img.dtype != np.uint8 and not (img.min() >= 0 and img.max() <= 255 and np.array_equal(img, np.round(img))):
        lo, hi = float(img.min()), float(img.max())
        img = (img.astype(np.float64) - lo) / max(hi - lo, 1e-8) * 255.0
    img = resize(img.astype(np.uint8), size, order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    return torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]


def medsam_masks(low_res: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """MedSAM's masks from low-res logits (P, C, m, m): probabilities resized to the image in one step, > 0.5
    (SAM's two-step resize through the model input moves ~1% of pixels of a stretched image)."""
    return F.interpolate(torch.sigmoid(low_res), size=tuple(shape), mode="bilinear", align_corners=False) > 0.5


IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


# how a model can answer clicks (``prompts.clicks``); a fine-tuned run records one as ``click_strategy``
CLICK_STRATEGIES = ("native", "search", "mixed")


class SamFamilyModel(nn.Module):
    """Image encoder, prompt encoder and mask decoder with the family's preprocessing; names match checkpoints."""

    def __init__(
        self,
        name: str,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        preprocessing: Preprocessing,
        point_prompts: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.preprocessing = preprocessing
        # Inference (no autograd) goes through fast_mask_decode when the decoder is the official one.
        self.use_fast_decoder = True
        self.decode_chunk = 8  # prompts per fast-decoder pass (bounds peak memory)
        # Whether point prompts give meaningful masks: from the registry, or from what a fine-tuned
        # checkpoint was trained with (a box-only LiteMedSAM fine-tuned on clicks keeps its name).
        self.point_prompts: bool = point_prompts
        self.class_names: list[str] = []  # the class head's classes (fine-tuned with --class-head)
        # how clicks are best answered, as a fine-tuning run's validation chose (None: by point_prompts)
        self.click_strategy: str | None = None
        self.finetuned_from: str | None = None  # the fine-tuning checkpoint applied, if any
        self._pe_cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """Spatial size of low-res logits / mask prompts (4x the embedding grid)."""
        return tuple(self.prompt_encoder.mask_input_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder forward on a preprocessed (B,3,S,S) batch -> (B,256,S/16 or 64,...) embedding."""
        return self.image_encoder(x)

    def dense_pe(self) -> torch.Tensor:
        """The prompt encoder's dense positional encoding (1,C,g,g), laid out token-major (see ``token_major``).

        Without autograd it is computed once per weights and device (sines and cosines of the whole grid,
        ~1 ms, were recomputed by every decode call)."""
        if torch.is_grad_enabled():
            return self.prompt_encoder.get_dense_pe()
        gauss = self.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        key = (gauss.data_ptr(), _version(gauss), gauss.device, gauss.dtype, self.prompt_encoder.image_embedding_size)
        if self._pe_cache is None or self._pe_cache[0] != key:
            pe = self.prompt_encoder.get_dense_pe()
            self._pe_cache = (key, pe[0].permute(1, 2, 0).contiguous().permute(2, 0, 1)[None])
        return self._pe_cache[1]

    def decode(
        self,
        embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        multimask: bool,
        stride: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder for P prompts on ONE image embedding (1,256,h,w).

        Coordinates are in the model-input frame. Returns low-res logits (P,C,m,m) and IoU (P,C); with
        ``stride`` 2 or 4 only ``sample_logits`` of them (P,C,m/s,m/s). Without autograd the official decoder
        runs re-associated (fast_mask_decode, same outputs).
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        if (self.use_fast_decoder and not torch.is_grad_enabled() and embedding.shape[0] == 1
                and fast_decoder_supported(self.mask_decoder)):
            # Without a mask input every prompt shares the same dense embedding: pass it once. Prompts
            # go in chunks: each holds ~35 MB of (4096 x 256) maps, so 32 at once would add over 1 GB.
            return fast_mask_decode_chunked(self.mask_decoder, token_major(embedding), self.dense_pe(),
                                            sparse, dense[:1] if masks is None else dense, multimask,
                                            self.decode_chunk, stride)
        logits, iou = self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return sample_logits(logits, stride), iou

    def count_parameters(self) -> dict[str, int]:
        """Total and trainable parameter counts per part."""
        out: dict[str, int] = {}
        for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
            mod = getattr(self, part)
            out[part] = sum(p.numel() for p in mod.parameters())
        out["total"] = sum(p.numel() for p in self.parameters())
        out["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return out


# --- fast mask decoder ----------------------------------------------------------------------------
# The official MaskDecoder copies the image embedding once per prompt and projects all 4096 image tokens
# through every attention layer of every prompt. Here the same weights are applied with the matrix
# products re-associated: projections act on the few prompt tokens instead of the 4096 image tokens
# (q.(xWk)^T = (qWk).x^T; softmax(.)(xWv) = (softmax(.)x)Wv because softmax rows sum to 1), work shared by
# all prompts of a box batch (no mask input) is done once, and the transposed convolutions run as matrix
# products with only the requested masks formed. Equal to the official decoder up to float rounding.


Derived = TypeVar("Derived")  # what ``last_derived`` keeps: a tensor or an array
_DERIVED: dict[str, tuple[torch.Tensor, int, object]] = {}  # name -> (embedding, its version, derived)


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place change counter (-1 for inference tensors, which keep none: they are made under
    inference mode and, like every embedding here, not changed in place once made)."""
    return -1 if t.is_inference() else t._version


def token_major(features: torch.Tensor) -> torch.Tensor:
    """An embedding (1,C,h,w) as a (1,C,h,w) view over token-major (h,w,C) memory, the layout the fast decoder
    works in (its token rows are then views, and window crops gather whole rows). The copy of the last
    embedding seen is kept: an interactive session decodes many prompts on one embedding, and a transposing
    copy of a 64x64x256 map costs ~1.5 ms, as much as decoding a small window."""
    if features.shape[0] != 1 or features[0].permute(1, 2, 0).is_contiguous():
        return features
    return last_derived(features, "token_major", lambda f: f[0].permute(1, 2, 0).contiguous().permute(2, 0, 1)[None])


def last_derived(features: torch.Tensor, name: str, make: Callable[[torch.Tensor], Derived]) -> Derived:
    """``make(features)``, kept per ``name`` for the last embedding seen (the same tensor, not changed in place
    since): an interactive session derives the same tensors (or arrays) from one embedding for many prompts."""
    last = _DERIVED.get(name)
    if last is not None and last[0] is features and last[1] == _version(features):
        return last[2]
    out = make(features)
    _DERIVED[name] = (features, _version(features), out)
    return out


def fast_decoder_supported(decoder: nn.Module) -> bool:
    """True when `decoder` is the official SAM MaskDecoder with plain Linear attention projections."""
    from medsamkit.models.sam_modules import sam_modeling

    m = sam_modeling()
    if type(decoder) is not m.MaskDecoder or type(decoder.transformer) is not m.TwoWayTransformer:
        return False
    ups = decoder.output_upscaling
    if len(ups) != 5 or not isinstance(ups[0], nn.ConvTranspose2d) or not isinstance(ups[3], nn.ConvTranspose2d):
        return False
    if not all(u.kernel_size == (2, 2) and u.stride == (2, 2) and u.padding == (0, 0) for u in (ups[0], ups[3])):
        return False
    if not all(isinstance(a, nn.GELU) and a.approximate == "none" for a in (ups[2], ups[4])):
        return False
    # The official transformer's attentions, named rather than found by walking every module (a walk cost 0.17 ms,
    # paid by each of the ~9 decoder calls of a click's search)
    tr = decoder.transformer
    attentions = [a for layer in tr.layers
                  for a in (layer.self_attn, layer.cross_attn_token_to_image, layer.cross_attn_image_to_token)]
    for mod in (*attentions, tr.final_attn_token_to_image):
        if type(mod) is not m.transformer.Attention:
            return False
        if not all(type(getattr(mod, n)) is nn.Linear for n in ("q_proj", "k_proj", "v_proj", "out_proj")):
            return False
    return True


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(P,T,h*d) -> (P,h,T,d)."""
    p, t, c = x.shape
    return x.view(p, t, heads, c // heads).transpose(1, 2)


def _head_rows(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(P,T,h*d) -> (h, P*T, d): every prompt's tokens as rows of one matrix per head."""
    p, t, c = x.shape
    return x.view(p, t, heads, c // heads).permute(2, 0, 1, 3).reshape(heads, p * t, c // heads)


def _token_to_image(attn: nn.Module, q: torch.Tensor, x: torch.Tensor, xp: torch.Tensor) -> torch.Tensor:
    """Official Attention(q=q, k=x+pe, v=x) of P prompt-token sets q (P,T,C) on image tokens x (1 or P,N,C).

    ``xp`` is x + pe, formed once per layer for this call and the image-to-token one. Image tokens shared
    by several prompts are projected once, as the official layer does, and all prompts' tokens meet them in
    one product per head. Per-prompt image tokens (or those of a single prompt) are not projected at all:
    the key/value projections move onto the T prompt tokens (T*heads rows instead of N image tokens; a
    lone prompt on 4096 tokens decodes in 24 ms instead of 32).
    """
    heads = attn.num_heads
    p, t, c = q.shape
    d = attn.internal_dim // heads
    if x.shape[0] == 1 and p > 1:
        n = x.shape[1]
        qh = _head_rows(attn.q_proj(q), heads) * d**-0.5  # (h, P*T, d)
        kh = attn.k_proj(xp[0]).view(n, heads, d).permute(1, 2, 0)  # (h, d, N)
        vh = attn.v_proj(x[0]).view(n, heads, d).transpose(0, 1)  # (h, N, d)
        out = torch.bmm(torch.bmm(qh, kh).softmax(-1), vh)  # (h, P*T, d)
        return attn.out_proj(out.view(heads, p, t, d).permute(1, 2, 0, 3).reshape(p, t, heads * d))
    qh = _heads(attn.q_proj(q), heads) * d**-0.5  # (P,h,T,d)
    # The key bias adds the same q.b to every score of a row: softmax ignores it.
    a = torch.matmul(qh, attn.k_proj.weight.view(heads, d, c)).reshape(p, heads * t, c)
    s = torch.bmm(a, xp.transpose(1, 2)).softmax(-1)  # (P,h*T,N)
    sx = torch.bmm(s, x)
    # Softmax rows sum to 1, so the value bias passes through unchanged.
    wv = attn.v_proj.weight.view(heads, d, c)
    out = torch.matmul(sx.view(p, heads, t, c), wv.transpose(1, 2)) + attn.v_proj.bias.view(1, heads, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(p, t, heads * d))


def _image_to_token_residual(attn: nn.Module, x: torch.Tensor, xp: torch.Tensor, k_in: torch.Tensor,
                             v_in: torch.Tensor) -> torch.Tensor:
    """x + official Attention(q=x+pe, k=k_in, v=v_in) for image tokens x (1 or P,N,C): (P,N,C).

    The output projection moves onto the values (T tokens); so does the query projection, unless the image
    tokens are shared by several prompts: then they are projected once. The residual x enters the final
    product as its addend, so the (P,N,C) sum is one pass.
    """
    heads = attn.num_heads
    p, t, c = k_in.shape
    n = xp.shape[1]
    d = attn.internal_dim // heads
    if xp.shape[0] == 1 and p > 1:
        kh = _head_rows(attn.k_proj(k_in), heads) * d**-0.5  # (h, P*T, d)
        qh = attn.q_proj(xp[0]).view(n, heads, d).permute(1, 2, 0)  # (h, d, N)
        # Scores laid out (h, P, T, N): the softmax over each head's T tokens is a strided one, cheap here.
        s = torch.bmm(kh, qh).view(heads, p, t, n).softmax(2).transpose(0, 1).reshape(p, heads * t, n)
    else:
        kh = _heads(attn.k_proj(k_in), heads) * d**-0.5  # (P,h,T,d)
        b = torch.matmul(kh, attn.q_proj.weight.view(heads, d, c)).reshape(p, heads * t, c)
        bias = torch.matmul(kh, attn.q_proj.bias.view(1, heads, d, 1)).view(p, heads * t, 1)
        scores = torch.bmm(b, xp.transpose(1, 2)) + bias  # (P,h*T,N): softmax over each head's T tokens
        s = scores.view(p, heads, t, n).softmax(2).view(p, heads * t, n)
    vh = _heads(attn.v_proj(v_in), heads)
    vo = torch.matmul(vh, attn.out_proj.weight.view(c, heads, d).permute(1, 2, 0)).reshape(p, heads * t, c)
    # Each image token's weights sum to 1 per head, so out_proj's bias is bias/heads on every value row.
    vo = vo + attn.out_proj.bias / heads
    return torch.baddbmm(x, s.transpose(1, 2), vo)


def fast_mask_decode(decoder: nn.Module, embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                     dense: torch.Tensor, multimask: bool | None, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The official MaskDecoder forward for P prompts on one image embedding (1,C,h,w), re-associated.

    dense is (1,C,h,w) when shared by every prompt (no mask input) or (P,C,h,w). The embedding and
    image_pe may also be (P,C,h,w), one crop per prompt (windowed decoding). Returns low-res logits
    (P,M,4h,4w) and IoU (P,M) with M = 3 (multimask) or 1, as the official decoder does (None: all tokens);
    ``stride`` 2 or 4: only ``sample_logits`` of them, (P,M,4h/s,4w/s), at a fraction of the upscaling's cost.
    """
    tr = decoder.transformer
    p = sparse.shape[0]
    _, c, h, w = embedding.shape
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], 0)
    tokens = torch.cat([tokens.unsqueeze(0).expand(p, -1, -1), sparse], 1)
    # Token-major and contiguous: on the channel-major views every later (P,N,C) pass is strided, 4x slower.
    x = (embedding + dense).flatten(2).transpose(1, 2).contiguous()  # (1 or P, N, C)
    pe = image_pe.flatten(2).transpose(1, 2).contiguous()  # (1 or P, N, C)
    if pe.shape[0] != x.shape[0]:  # per-prompt positions: the image tokens are per prompt too
        x = x.expand(p, -1, -1).contiguous()
    queries, qpe = tokens, tokens
    for layer in tr.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + qpe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        xp = x + pe
        queries = layer.norm2(queries + _token_to_image(layer.cross_attn_token_to_image, queries + qpe, x, xp))
        queries = layer.norm3(queries + layer.mlp(queries))
        x = layer.norm4(_image_to_token_residual(layer.cross_attn_image_to_token, x, xp, queries + qpe, queries))
    sel = slice(None) if multimask is None else slice(1, None) if multimask else slice(0, 1)
    mask_ids = range(decoder.num_mask_tokens)[sel]
    # The last attention acts on each token alone: only the IoU token and the requested mask tokens.
    keep = [0] + [1 + i for i in mask_ids]
    queries, qpe = queries[:, keep], qpe[:, keep]
    queries = tr.norm_final_attn(queries + _token_to_image(tr.final_attn_token_to_image, queries + qpe, x, x + pe))
    iou = decoder.iou_prediction_head(queries[:, 0])
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](queries[:, 1 + j]) for j, i in enumerate(mask_ids)], 1)
    masks = _upscale_masks(decoder.output_upscaling, x, hyper, h, w, stride)
    return masks, iou[:, sel]


def fast_mask_decode_chunked(decoder: nn.Module, embedding: torch.Tensor, image_pe: torch.Tensor,
                             sparse: torch.Tensor, dense: torch.Tensor, multimask: bool | None,
                             step: int, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """fast_mask_decode over the P prompts `step` at a time (bounds peak memory); per-prompt inputs
    (first dimension P > 1) are sliced with the prompts, shared ones (first dimension 1) passed whole."""
    p = sparse.shape[0]

    def part(t: torch.Tensor, i: int) -> torch.Tensor:
        return t if t.shape[0] == 1 else t[i : i + step]

    outs = [fast_mask_decode(decoder, part(embedding, i), part(image_pe, i), sparse[i : i + step],
                             part(dense, i), multimask, stride) for i in range(0, p, step)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


_linear = onednn.linear


def _upscale_masks(ups: nn.Sequential, x: torch.Tensor, hyper: torch.Tensor, h: int, w: int,
                   stride: int = 1) -> torch.Tensor:
    """output_upscaling + hypernetwork product: tokens (P,h*w,C), hyper (P,M,c2) -> logits (P,M,4h/s,4w/s).

    A 2x2 stride-2 transposed convolution is one matrix product per input pixel followed by a pixel
    shuffle; the shuffles are deferred to the very end so each product runs on contiguous rows. With
    ``stride`` s (2 or 4) only every s-th logit of each axis is formed (``sample_logits``: the same values):
    the kernel taps of the other output pixels are never multiplied.
    """
    conv1, norm, _, conv2, _ = ups
    p, _, c = x.shape
    c1, c2 = conv1.out_channels, conv2.out_channels
    # output pixel 4i + 2a + a2 per axis: stride 4 keeps a = 1, a2 = 0 (pixel 4i + 2), stride 2 keeps a2 = 1
    taps1 = slice(1, 2) if stride == 4 else slice(0, 2)
    taps2 = slice(0, 1) if stride == 4 else slice(1, 2) if stride == 2 else slice(0, 2)
    k1, k2 = taps1.stop - taps1.start, taps2.stop - taps2.start
    w1 = conv1.weight[:, :, taps1, taps1].permute(2, 3, 1, 0).reshape(k1 * k1 * c1, c).contiguous()  # (a, b, o)
    y = _linear(x.reshape(-1, c), w1, conv1.bias.repeat(k1 * k1), False).view(p, h * w * k1 * k1, c1)
    y = F.gelu(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps))
    w2 = conv2.weight[:, :, taps2, taps2].permute(2, 3, 1, 0).reshape(k2 * k2 * c2, c1).contiguous()
    z = _linear(y.view(-1, c1), w2, conv2.bias.repeat(k2 * k2), True).view(p, -1, c2)
    m = hyper.shape[1]
    out = torch.bmm(z, hyper.transpose(1, 2))  # (P, h*w*k1^2*k2^2, M): rows (i, j, a, b, a2, b2)
    out = out.view(p, h, w, k1, k1, k2, k2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return out.reshape(p, m, h * k1 * k2, w * k1 * k2)


def sample_logits(logits: torch.Tensor, stride: int) -> torch.Tensor:
    """Every ``stride``-th low-res logit per axis, at pixels s*i + s//2 (the strided decoders' samples)."""
    return logits if stride == 1 else logits[..., stride // 2 :: stride, stride // 2 :: stride]
