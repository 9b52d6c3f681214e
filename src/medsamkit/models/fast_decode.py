"""The official SAM MaskDecoder's forward, re-associated for inference speed (same outputs up to float rounding).

The official decoder copies the image embedding once per prompt and projects all 4096 image tokens through every
attention layer of every prompt. Here the same weights are applied with the matrix products re-associated:
projections act on the few prompt tokens instead of the image tokens (q.(xWk)^T = (qWk).x^T; softmax(.)(xWv) =
(softmax(.)x)Wv because softmax rows sum to 1), work shared by all prompts of a box batch (no mask input) is done
once, and the transposed convolutions run as matrix products with only the requested masks formed.

Prompts come in groups (``DecodeGroup``), each on its own image tokens: the whole embedding, or one window crop per
prompt (``models.local_decode``) of any size. Every step on the prompt tokens alone (self-attention, MLPs,
projections, output heads) runs once for all groups; only the steps touching image tokens run per group. A click's
search decodes ~16 boxes in 5-9 window sizes: one pass instead of one per size (each pass had ~4 ms of fixed cost).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from medsamkit.models import onednn


class DecodeGroup(NamedTuple):
    """Prompts decoded on the same kind of image tokens: ``embedding`` and ``image_pe`` (1,C,h,w) shared by all
    ``prompts`` or (P_g,C,h,w) one per prompt; ``dense`` (1,C,h,w) or (1,C,1,1) shared, or (P_g,C,h,w)."""

    embedding: torch.Tensor
    image_pe: torch.Tensor
    dense: torch.Tensor
    prompts: int


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
    # paid by every decoder call of a click's search)
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


def _shared(x: torch.Tensor, prompts: int) -> bool:
    """Whether a group's image tokens x (1 or P_g,N,C) are shared by several prompts: then they are projected
    once, as the official layer does; per-prompt tokens (or a single prompt's) are never projected."""
    return x.shape[0] == 1 and prompts > 1


def _spans(sizes: list[int]) -> list[slice]:
    """The prompt rows of each group, in order."""
    out, start = [], 0
    for n in sizes:
        out.append(slice(start, start + n))
        start += n
    return out


def _token_to_image(attn: nn.Module, q: torch.Tensor, xs: list[torch.Tensor], xps: list[torch.Tensor],
                    spans: list[slice]) -> torch.Tensor:
    """Official Attention(q=q, k=x+pe, v=x) of P prompt-token sets q (P,T,C), each group's rows (``spans``) on
    its image tokens x (1 or P_g,N,C); ``xps`` are x + pe, formed once per layer for this call and the
    image-to-token one. Shared image tokens are projected once and all their prompts' tokens meet them in one
    product per head; for per-prompt tokens the key/value projections move onto the T prompt tokens (T*heads rows
    instead of N image tokens; a lone prompt on 4096 tokens decodes in 24 ms instead of 32).
    """
    heads = attn.num_heads
    p, t, c = q.shape
    d = attn.internal_dim // heads
    qp = attn.q_proj(q)
    per_prompt = [i for i, (x, rows) in enumerate(zip(xs, spans)) if not _shared(x, rows.stop - rows.start)]
    if per_prompt:
        # The key bias adds the same q.b to every score of a row: softmax ignores it.
        a = torch.matmul(_heads(qp, heads) * d**-0.5, attn.k_proj.weight.view(heads, d, c)).reshape(p, heads * t, c)
    pieces: list[torch.Tensor] = []
    for x, xp, rows in zip(xs, xps, spans):
        if _shared(x, rows.stop - rows.start):
            n, g = x.shape[1], rows.stop - rows.start
            qh = _head_rows(qp[rows], heads) * d**-0.5  # (h, P_g*T, d)
            kh = attn.k_proj(xp[0]).view(n, heads, d).permute(1, 2, 0)  # (h, d, N)
            vh = attn.v_proj(x[0]).view(n, heads, d).transpose(0, 1)  # (h, N, d)
            out = torch.bmm(torch.bmm(qh, kh).softmax(-1), vh)  # (h, P_g*T, d)
            pieces.append(out.view(heads, g, t, d).permute(1, 2, 0, 3).reshape(g, t, heads * d))
        else:
            pieces.append(torch.bmm(torch.bmm(a[rows], xp.transpose(1, 2)).softmax(-1), x))  # (P_g,h*T,C)
    if per_prompt:
        sx = torch.cat([pieces[i] for i in per_prompt])
        # Softmax rows sum to 1, so the value bias passes through unchanged.
        wv = attn.v_proj.weight.view(heads, d, c)
        out = torch.matmul(sx.view(-1, heads, t, c), wv.transpose(1, 2)) + attn.v_proj.bias.view(1, heads, 1, d)
        out = out.transpose(1, 2).reshape(-1, t, heads * d)
        for i, part in zip(per_prompt, torch.split(out, [spans[i].stop - spans[i].start for i in per_prompt])):
            pieces[i] = part
    return attn.out_proj(torch.cat(pieces) if len(pieces) > 1 else pieces[0])


def _image_to_token_residual(attn: nn.Module, xs: list[torch.Tensor], xps: list[torch.Tensor], k_in: torch.Tensor,
                             v_in: torch.Tensor, spans: list[slice]) -> list[torch.Tensor]:
    """Per group: x + official Attention(q=x+pe, k=k_in, v=v_in) for its image tokens x (1 or P_g,N,C), (P_g,N,C).

    The output projection moves onto the values (T tokens); so does the query projection, unless the image
    tokens are shared by several prompts: then they are projected once. The residual x enters the final
    product as its addend, so the (P,N,C) sum is one pass.
    """
    heads = attn.num_heads
    p, t, c = k_in.shape
    d = attn.internal_dim // heads
    kp = attn.k_proj(k_in)
    if any(not _shared(x, rows.stop - rows.start) for x, rows in zip(xs, spans)):
        kh = _heads(kp, heads) * d**-0.5  # (P,h,T,d)
        b = torch.matmul(kh, attn.q_proj.weight.view(heads, d, c)).reshape(p, heads * t, c)
        bias = torch.matmul(kh, attn.q_proj.bias.view(1, heads, d, 1)).view(p, heads * t, 1)
    vh = _heads(attn.v_proj(v_in), heads)
    vo = torch.matmul(vh, attn.out_proj.weight.view(c, heads, d).permute(1, 2, 0)).reshape(p, heads * t, c)
    # Each image token's weights sum to 1 per head, so out_proj's bias is bias/heads on every value row.
    vo = vo + attn.out_proj.bias / heads
    out = []
    for x, xp, rows in zip(xs, xps, spans):
        g, n = rows.stop - rows.start, xp.shape[1]
        if _shared(x, g):
            khr = _head_rows(kp[rows], heads) * d**-0.5  # (h, P_g*T, d)
            qh = attn.q_proj(xp[0]).view(n, heads, d).permute(1, 2, 0)  # (h, d, N)
            # Scores laid out (h, P_g, T, N): the softmax over each head's T tokens is a strided one, cheap here.
            s = torch.bmm(khr, qh).view(heads, g, t, n).softmax(2).transpose(0, 1).reshape(g, heads * t, n)
        else:
            scores = torch.bmm(b[rows], xp.transpose(1, 2)) + bias[rows]  # (P_g,h*T,N): softmax per head's T
            s = scores.view(g, heads, t, n).softmax(2).view(g, heads * t, n)
        out.append(torch.baddbmm(x, s.transpose(1, 2), vo[rows]))
    return out


def decode_groups(decoder: nn.Module, groups: list[DecodeGroup], sparse: torch.Tensor, multimask: bool | None,
                  stride: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The official MaskDecoder forward for the prompts of several groups (``DecodeGroup``; ``sparse`` (P,T,C)
    holds their sparse prompt embeddings, group after group). Per group: low-res logits (P_g,M,4h,4w) and IoU
    (P_g,M) with M = 3 (multimask) or 1, as the official decoder does (None: all tokens); ``stride`` 2 or 4: only
    ``sample_logits`` of them, (P_g,M,4h/s,4w/s), at a fraction of the upscaling's cost.
    """
    tr = decoder.transformer
    p = sparse.shape[0]
    spans = _spans([g.prompts for g in groups])
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], 0)
    tokens = torch.cat([tokens.unsqueeze(0).expand(p, -1, -1), sparse], 1)
    xs, pes = [], []
    for g in groups:
        # Token-major and contiguous: on the channel-major views every later (P,N,C) pass is strided, 4x slower.
        x = (g.embedding + g.dense).flatten(2).transpose(1, 2).contiguous()  # (1 or P_g, N, C)
        pe = g.image_pe.flatten(2).transpose(1, 2).contiguous()  # (1 or P_g, N, C)
        if pe.shape[0] != x.shape[0]:  # per-prompt positions: the image tokens are per prompt too
            x = x.expand(g.prompts, -1, -1).contiguous()
        xs.append(x)
        pes.append(pe)
    queries, qpe = tokens, tokens
    for layer in tr.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + qpe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        xps = [x + pe for x, pe in zip(xs, pes)]
        attn = layer.cross_attn_token_to_image
        queries = layer.norm2(queries + _token_to_image(attn, queries + qpe, xs, xps, spans))
        queries = layer.norm3(queries + layer.mlp(queries))
        xs = [layer.norm4(x) for x in _image_to_token_residual(layer.cross_attn_image_to_token, xs, xps,
                                                               queries + qpe, queries, spans)]
    sel = slice(None) if multimask is None else slice(1, None) if multimask else slice(0, 1)
    mask_ids = range(decoder.num_mask_tokens)[sel]
    # The last attention acts on each token alone: only the IoU token and the requested mask tokens.
    keep = [0] + [1 + i for i in mask_ids]
    queries, qpe = queries[:, keep], qpe[:, keep]
    xps = [x + pe for x, pe in zip(xs, pes)]
    queries = tr.norm_final_attn(queries + _token_to_image(tr.final_attn_token_to_image, queries + qpe, xs, xps,
                                                           spans))
    iou = decoder.iou_prediction_head(queries[:, 0])[:, sel]
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](queries[:, 1 + j]) for j, i in enumerate(mask_ids)], 1)
    return [(_upscale_masks(decoder.output_upscaling, x, hyper[rows], *g.embedding.shape[2:], stride), iou[rows])
            for g, x, rows in zip(groups, xs, spans)]


def fast_mask_decode(decoder: nn.Module, embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                     dense: torch.Tensor, multimask: bool | None, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The official MaskDecoder forward for P prompts on one image embedding (1,C,h,w), re-associated.

    dense is (1,C,h,w) when shared by every prompt (no mask input) or (P,C,h,w). The embedding and
    image_pe may also be (P,C,h,w), one crop per prompt (windowed decoding). Returns low-res logits
    (P,M,4h,4w) and IoU (P,M) as ``decode_groups`` does for one group.
    """
    return decode_groups(decoder, [DecodeGroup(embedding, image_pe, dense, sparse.shape[0])], sparse, multimask,
                         stride)[0]


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
