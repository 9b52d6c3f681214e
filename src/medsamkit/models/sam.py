"""The SAM-family model as medsamkit uses it: encoder + prompt encoder + mask decoder + preprocessing spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsamkit.models.fast_decode import fast_decoder_supported, fast_mask_decode_chunked, sample_logits


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
