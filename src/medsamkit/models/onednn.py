"""oneDNN fused CPU kernels (bias + activation inside the product), used by TinyViT and the fast decoder.

Each wrapper falls back to the eager ops when the kernel is missing (builds without oneDNN), when autograd
needs a backward (these kernels have none), for non-float32 or non-CPU tensors, and while tracing, exporting
or compiling (those need standard aten ops). The module attributes are read at call time, so exporters and
tests can switch a kernel off (set it to None) or compare against eager convolutions (``PLAIN_CONVS``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def find_op(name: str) -> object | None:
    """A oneDNN kernel with fused bias/activation (the ones torch.compile uses on CPU), None without oneDNN."""
    try:
        return getattr(torch.ops.mkldnn, name) if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


FUSED_CONV = find_op("_convolution_pointwise")
FUSED_LINEAR = find_op("_linear_pointwise")
PLAIN_CONVS = True  # oneDNN for BN-free/plain convolutions too; the tests compare against False (eager)


def usable(op: object | None, *tensors: torch.Tensor) -> bool:
    """True when a oneDNN inference kernel may replace the eager ops: float32 CPU tensors and no autograd."""
    if op is None or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False  # exporters (TorchScript tracing, torch.export) and compilers need standard aten ops
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # these kernels have no backward
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """x @ weight^T + bias (then exact GELU when ``gelu``) in one pass; eager F.linear otherwise.

    The eager CPU path first writes the bias into the output, then accumulates the product, then runs GELU:
    up to three passes over the largest tensors; the fused kernel gives the same values.
    """
    op = FUSED_LINEAR
    if usable(op, x, weight, *([bias] if bias is not None else [])):
        return op(x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def conv(c: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
         gelu: bool = False) -> torch.Tensor:
    """``c``'s convolution with the given weight/bias (then GELU when ``gelu``) as one oneDNN kernel at inference.

    With GELU fused: one memory pass instead of two over the 67 MB stage-0 maps. Without: eager
    ``F.conv2d`` on a channels-last map with a contiguous (BN-folded) weight falls back to the slow im2col
    path for 1x1 convolutions, 1.5x slower than the oneDNN kernel here.
    """
    op = FUSED_CONV
    if (gelu or PLAIN_CONVS) and usable(op, x, weight, *([bias] if bias is not None else [])):
        attr, scalars, algorithm = ("gelu", [None], "none") if gelu else ("none", [], "")
        return op(x, weight, bias, list(c.padding), list(c.stride), list(c.dilation), c.groups,
                  attr, scalars, algorithm)
    y = F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)
    return F.gelu(y) if gelu else y
