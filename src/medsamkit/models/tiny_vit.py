"""LiteMedSAM's TinyViT image encoder in pure torch: a (B,3,256,256) image -> a (B,256,64,64) embedding.

Module and parameter names follow the upstream checkpoint (``image_encoder.*`` keys of
``lite_medsam.pth``), so its weights load with ``strict=True``. Architecture: TinyViT (Wu et al., 2022)
as modified by MobileSAM and LiteMedSAM: 1x1 stride-1 patch embedding, an MBConv stage at full
resolution, three windowed-attention stages with a learned relative-position bias, and SAM's neck.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medsamkit.core.errors import InputError, where
from medsamkit.models import onednn

__all__ = [
    "ENCODER_PREFIX",
    "LITEMEDSAM_IMG_SIZE",
    "LITEMEDSAM_EMBED_CHANS",
    "TinyViT",
    "build_litemedsam_encoder",
    "encoder_state_from_litemedsam",
]

ENCODER_PREFIX = "image_encoder."

LITEMEDSAM_IMG_SIZE = 256
LITEMEDSAM_EMBED_CHANS = 256


def _linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply an MLP linear layer; a plain ``nn.Linear`` runs as one oneDNN kernel at inference.

    Wrapped layers are called as modules. Attention's ``qkv`` and ``proj`` never come here: wrapping them
    with zero-initialised LoRA must leave outputs bit-identical.
    """
    if type(layer) is nn.Linear:
        return onednn.linear(x, layer.weight, layer.bias)
    return layer(x)


_conv = onednn.conv


class Conv2dBN(nn.Module):
    """Bias-free convolution followed by BatchNorm; in eval mode the BatchNorm is folded into the conv."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        """Convolution + BatchNorm, then GELU when ``gelu`` (fused into one oneDNN kernel where possible)."""
        if self.training:
            y = self.bn(self.c(x))
            return F.gelu(y) if gelu else y
        # Folding saves a full pass over the largest activations (256 channels at 256x256); it is
        # recomputed every call so that loaded or fine-tuned weights are always the ones used.
        bn, c = self.bn, self.c
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = c.weight * scale.view(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        return _conv(c, x, weight, bias, gelu)


class PatchEmbed(nn.Module):
    """LiteMedSAM's patch embedding: two 1x1 stride-1 convolutions, so no downsampling at all."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2), nn.GELU(), Conv2dBN(embed_dim // 2, embed_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # seq[1] (the GELU) runs inside seq[0]'s kernel; it stays in seq to keep the checkpoint's indices.
        return self.seq[2](self.seq[0](x, gelu=True))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, chans: int, expand_ratio: float, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.drop_path_rate = drop_path_rate
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2dBN(chans, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, kernel_size=3, groups=hidden)
        self.conv3 = Conv2dBN(hidden, chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x, gelu=True), gelu=True)
        return F.gelu(drop_path(self.conv3(y), self.drop_path_rate, self.training) + x)


class PatchMerging(nn.Module):
    """Change of width between stages: 1x1 conv, 3x3 depthwise conv (stride 2, or 1), 1x1 conv."""

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(in_chans, out_chans)
        self.conv2 = Conv2dBN(out_chans, out_chans, kernel_size=3, stride=stride, groups=out_chans)
        self.conv3 = Conv2dBN(out_chans, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x, gelu=True), gelu=True))


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks on a (B,C,H,W) map, then patch merging."""

    def __init__(
        self, chans: int, expand_ratio: float, drop_path_rates: Sequence[float], downsample: PatchMerging | None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(chans, expand_ratio, rate) for rate in drop_path_rates)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


def relative_offset_index(window_size: int) -> tuple[torch.Tensor, int]:
    """(N,N) index of each query/key pair's |dy|,|dx| offset inside a window (N = window_size**2).

    Offsets are numbered in order of first appearance when scanning query then key positions in raster
    order, which is the order the checkpoint's ``attention_biases`` columns were trained with.
    """
    points = list(itertools.product(range(window_size), range(window_size)))
    offsets: dict[tuple[int, int], int] = {}
    index = []
    for qy, qx in points:
        for ky, kx in points:
            index.append(offsets.setdefault((abs(qy - ky), abs(qx - kx)), len(offsets)))
    n = len(points)
    return torch.tensor(index, dtype=torch.long).view(n, n), len(offsets)


class Attention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, with a learned relative-position bias.

    Works on a (B,H,W,C) map, zero-padded bottom/right to whole windows; as upstream, padded tokens are
    normalised and take part as keys. ``qkv`` and ``proj`` are plain ``nn.Linear`` so LoRA can wrap them.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        index, n_offsets = relative_offset_index(window_size)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, n_offsets))
        # Derived from window_size alone, and absent from the checkpoint: not persistent.
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def padded_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """q,k,v of the map padded to whole windows: (B, H', W', 3*dim).

        Every padded token is the zero vector, so its q,k,v is one row computed once instead of running
        the norm and ``qkv`` over up to 20% more tokens.
        """
        b, h, w, c = x.shape
        ws = self.window_size
        qkv = self.qkv(self.norm(x))
        pad_b, pad_r = -h % ws, -w % ws
        if not (pad_b or pad_r):
            return qkv
        pad_token = self.qkv(self.norm(x.new_zeros(1, c)))[0]
        padded = qkv.new_empty(b, h + pad_b, w + pad_r, qkv.shape[-1])
        padded[:, :h, :w] = qkv
        padded[:, h:] = pad_token
        padded[:, :h, w:] = pad_token
        return padded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B,H,W,C) -> attention output (B,H,W,C) (projected, without the residual)."""
        b, h, w, c = x.shape
        ws, heads, hd = self.window_size, self.num_heads, self.head_dim
        qkv = self.padded_qkv(x)
        nh, nw = qkv.shape[1] // ws, qkv.shape[2] // ws
        # Checkpoint layout of the qkv features: per head, then q|k|v, then head_dim.
        q, k, v = (
            qkv.view(b, nh, ws, nw, ws, heads, 3, hd)
            .permute(6, 0, 1, 3, 5, 2, 4, 7)
            .reshape(3, b * nh * nw, heads, ws * ws, hd)
            .unbind(0)
        )
        # index_select: advanced indexing with a 2-D index measured 5x slower on CPU (0.55 vs 0.12 ms).
        bias = self.attention_biases.index_select(1, self.attention_bias_idxs.view(-1)).view(heads, ws * ws, -1)
        # softmax(q k^T / sqrt(head_dim) + bias) v. Measured on 2 CPU threads: SDPA's fused kernel (it needs
        # a 4-D mask) wins for 14x14 windows (196 tokens), the explicit form for 7x7 ones.
        if ws * ws >= 100:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        else:
            attn = torch.matmul(q * hd**-0.5, k.transpose(-2, -1)).add_(bias)
            out = torch.matmul(attn.softmax(dim=-1), v)
        out = (
            out.view(b, nh, nw, heads, ws, ws, hd)
            .permute(0, 1, 4, 2, 5, 3, 6)
            .reshape(b, nh * ws, nw * ws, c)[:, :h, :w]
        )
        return self.proj(out)


class Mlp(nn.Module):
    """Pre-norm feed-forward: LayerNorm, Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(_linear(self.fc2, self.drop(F.gelu(_linear(self.fc1, self.norm(x))))))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class TinyViTBlock(nn.Module):
    """Window attention, 3x3 depthwise conv, MLP; works on (B,H,W,C) tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        drop: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.local_conv = Conv2dBN(dim, dim, kernel_size=local_conv_size, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(x), self.drop_path_rate, self.training)
        # (B,H,W,C) -> (B,C,H,W) as a channels-last view, no copy.
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + drop_path(self.mlp(x), self.drop_path_rate, self.training)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks on (B,H,W,C) tokens, then optional patch merging."""

    def __init__(self, blocks: Sequence[TinyViTBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B,C,H,W) map, as in SAM's neck."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last, the channel dimension is innermost: the native layer_norm kernel applies.
        x = F.layer_norm(x.permute(0, 2, 3, 1), (self.weight.numel(),), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck; defaults are LiteMedSAM's.

    Input: float (B, in_chans, img_size, img_size), already normalised (LiteMedSAM: min-max to [0,1],
    3 channels, padded bottom/right to 256x256). Output: (B, out_chans, S, S) with S = img_size divided
    by the product of ``merge_strides``, the depthwise strides of the patch-merging layers (LiteMedSAM:
    (2, 2, 1), so 256 -> 64; the patch embedding does not downsample). Supports batches, train mode
    (BatchNorm on batch statistics, dropout and drop-path, both 0 by default) and autograd; in eval mode
    on CPU without autograd, oneDNN kernels with fused bias/GELU are used (same results to ~1e-6).
    """

    def __init__(
        self,
        img_size: int = LITEMEDSAM_IMG_SIZE,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        merge_strides: Sequence[int] = (2, 2, 1),
        out_chans: int = LITEMEDSAM_EMBED_CHANS,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not (len(embed_dims) == len(depths) == len(num_heads) == len(window_sizes) == len(merge_strides) + 1):
            raise ValueError("embed_dims, depths, num_heads, window_sizes need one entry per stage")
        self.img_size = img_size
        self.in_chans = in_chans
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        # Stochastic depth grows linearly over all blocks, MBConv ones included, as in TinyViT.
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            merge = None
            if i < len(merge_strides):
                merge = PatchMerging(embed_dims[i], embed_dims[i + 1], merge_strides[i])
            first = sum(depths[:i])
            if i == 0:
                self.layers.append(ConvStage(embed_dims[0], mbconv_expand_ratio, rates[:depth], merge))
                continue
            blocks = [
                TinyViTBlock(
                    embed_dims[i], num_heads[i], window_sizes[i], mlp_ratio, local_conv_size,
                    drop=drop_rate, drop_path_rate=rates[first + j],
                )
                for j in range(depth)
            ]
            self.layers.append(AttentionStage(blocks, merge))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, img_size, img_size) float -> (B, out_chans, H', W') image embedding."""
        expected = (self.in_chans, self.img_size, self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected or not x.is_floating_point():
            raise InputError(
                f"encoder input must be a float (B, {', '.join(map(str, expected))}) tensor, "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        # Channels-last keeps every conv and the (B,H,W,C) token layout the same memory, without copies.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        x = self.layers[0](x).permute(0, 2, 3, 1)
        for layer in self.layers[1:]:
            x = layer(x)
        return self._neck(x.permute(0, 3, 1, 2)).contiguous()

    def _neck(self, x: torch.Tensor) -> torch.Tensor:
        """SAM's neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d), the convolutions through `_conv`."""
        conv1, norm1, conv2, norm2 = self.neck
        if not (type(conv1) is nn.Conv2d and type(conv2) is nn.Conv2d):
            return self.neck(x)  # wrapped (e.g. by a user's PEFT): call the modules as they are
        x = norm1(_conv(conv1, x, conv1.weight, conv1.bias))
        return norm2(_conv(conv2, x, conv2.weight, conv2.bias))


def build_litemedsam_encoder() -> TinyViT:
    """LiteMedSAM's TinyViT encoder, uninitialised: load ``image_encoder.*`` weights into it (strict).

    Input contract: float32 (B, 3, 256, 256), min-max normalised to [0,1]; output (B, 256, 64, 64).
    """
    return TinyViT()


def encoder_state_from_litemedsam(
    state: Mapping[str, torch.Tensor], source: object | None = None
) -> dict[str, torch.Tensor]:
    """The ``image_encoder.*`` entries of a full LiteMedSAM state dict, prefix removed, for strict loading."""
    encoder_state = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    if not encoder_state:
        raise InputError(f"{where(source)}no '{ENCODER_PREFIX}*' weights: not a LiteMedSAM checkpoint")
    return encoder_state
