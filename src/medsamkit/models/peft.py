"""Parameter-efficient fine-tuning of image encoders: bottleneck adapters and LoRA as module wrappers.

Works on the transformer blocks of our TinyViT (``tiny_vit.TinyViTBlock``) and of SAM's ViT
(``segment_anything.modeling.image_encoder.Block``): both hold an ``attn`` module whose ``qkv`` and
``proj`` are plain ``nn.Linear`` layers. Every wrapper starts as the identity of the pretrained model
(adapter up-projection and LoRA ``B`` are zero), and all pretrained encoder weights are frozen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medsamkit.core.errors import InputError


class Adapter(nn.Module):
    """Bottleneck adapter (SAM-Med2D / Med-SA): x + up(GELU(down(x))), up-projection zero-initialised."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class AdaptedAttention(nn.Module):
    """A block's attention followed by an adapter on its output (before the block's residual sum)."""

    def __init__(self, attn: nn.Module, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.attn = attn
        self.adapter = Adapter(dim, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.attn(x))


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / rank) * B A x, with A Kaiming-uniform and B zero (Hu et al. 2021)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise InputError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear computing the same map: W + (alpha / rank) B A, the base bias (inference costs nothing)."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None)
        layer = layer.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            delta = (self.lora_b.double() @ self.lora_a.double()) * self.scaling
            layer.weight.copy_((self.base.weight.double() + delta).to(self.base.weight.dtype))
            if self.base.bias is not None:
                layer.bias.copy_(self.base.bias)
        layer.requires_grad_(False)
        return layer


def _known_block_types() -> tuple[type, ...]:
    from medsamkit.models.sam_modules import sam_modeling
    from medsamkit.models.tiny_vit import TinyViTBlock

    return TinyViTBlock, sam_modeling().image_encoder.Block


def _attention_of(block: nn.Module) -> nn.Module:
    attn = block.attn
    return attn.attn if isinstance(attn, AdaptedAttention) else attn


def encoder_blocks(encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks of an encoder (TinyViT or SAM ViT), in order, with their qualified names."""
    known = _known_block_types()
    blocks = [(n, m) for n, m in encoder.named_modules() if isinstance(m, known)]
    if not blocks:  # another SAM-family encoder: any module whose `attn` has a qkv Linear
        blocks = [(n, m) for n, m in encoder.named_modules()
                  if isinstance(getattr(m, "attn", None), nn.Module)
                  and isinstance(getattr(_attention_of(m), "qkv", None), (nn.Linear, LoRALinear))]
    if not blocks:
        raise InputError(f"{type(encoder).__name__}: no transformer blocks with an attention `qkv` layer found")
    return blocks


def _freeze_pretrained(encoder: nn.Module) -> None:
    for name, p in encoder.named_parameters():
        if not is_peft_parameter(name):
            p.requires_grad_(False)


def is_peft_parameter(name: str) -> bool:
    """True for parameters added by add_adapters / add_lora (by their qualified name)."""
    parts = name.split(".")
    return "adapter" in parts or parts[-1] in ("lora_a", "lora_b")


def add_adapters(encoder: nn.Module, bottleneck: int = 32) -> int:
    """Put one zero-initialised bottleneck adapter after the attention of every block; freeze the rest.

    Returns the number of parameters added: per block of width C, 2*C*bottleneck + bottleneck + C.
    """
    if bottleneck < 1:
        raise InputError(f"adapter bottleneck must be >= 1, got {bottleneck}")
    added = 0
    for name, block in encoder_blocks(encoder):
        if isinstance(block.attn, AdaptedAttention):
            raise InputError(f"{name}: adapters were already added")
        dim = _attention_of(block).qkv.in_features
        ref = next(block.parameters())
        block.attn = AdaptedAttention(block.attn, dim, bottleneck).to(ref.device, ref.dtype)
        added += sum(p.numel() for p in block.attn.adapter.parameters())
    _freeze_pretrained(encoder)
    return added


def add_lora(encoder: nn.Module, rank: int = 4, alpha: float = 8.0, targets: Sequence[str] = ("qkv",)) -> int:
    """Wrap the attention Linear layers named in `targets` ("qkv", "proj") with LoRA; freeze the rest.

    Returns the number of parameters added: rank * (in_features + out_features) per wrapped layer.
    """
    targets = tuple(targets)
    bad = [t for t in targets if t not in ("qkv", "proj")]
    if bad or not targets:
        raise InputError(f"LoRA targets must be among qkv, proj; got {', '.join(targets) or 'none'}")
    added = 0
    for name, block in encoder_blocks(encoder):
        attn = _attention_of(block)
        for t in targets:
            layer = getattr(attn, t)
            if isinstance(layer, LoRALinear):
                raise InputError(f"{name}.attn.{t}: LoRA was already added")
            if not isinstance(layer, nn.Linear):
                raise InputError(f"{name}.attn.{t}: expected nn.Linear, found {type(layer).__name__}")
            wrapped = LoRALinear(layer, rank, alpha).to(layer.weight.device, layer.weight.dtype)
            setattr(attn, t, wrapped)
            added += wrapped.lora_a.numel() + wrapped.lora_b.numel()
    _freeze_pretrained(encoder)
    return added


def merge_lora(encoder: nn.Module) -> int:
    """Replace every LoRALinear of an encoder by its merged plain Linear (for inference); returns how many."""
    wrapped = [(n, m) for n, m in encoder.named_modules() if isinstance(m, LoRALinear)]
    for name, layer in wrapped:
        parent_name, _, attr = name.rpartition(".")
        setattr(encoder.get_submodule(parent_name) if parent_name else encoder, attr, layer.merged())
    return len(wrapped)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts of a module."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
