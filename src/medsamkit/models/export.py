"""ONNX export of a SAM-family model: encoder.onnx + decoder.onnx + export.json, runnable by onnxruntime.

The decoder graph takes prompts the way SAM's own ONNX decoder does: points and box corners as one
(P, N, 2) coordinate array in the model-input frame with labels (1 fg, 0 bg, -1 padding, 2/3 box corners),
and a mask input switched on by ``has_mask_input``; it returns all mask tokens' logits and IoUs.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from medsamkit.core.errors import InputError
from medsamkit.models.fast_decode import fast_decoder_supported, fast_mask_decode
from medsamkit.models.sam import SamFamilyModel

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
META_FILE = "export.json"
OPSET = 17


class PromptDecoder(nn.Module):
    """Prompt encoder + mask decoder with array-only inputs (the graph exported as decoder.onnx)."""

    def __init__(self, model: SamFamilyModel) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.fast = fast_decoder_supported(model.mask_decoder)

    def embed_prompts(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sparse embeddings (P,N,C) of points/corners; equal to PromptEncoder._embed_points/_embed_boxes."""
        pe = self.prompt_encoder
        emb = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
        lab = labels.unsqueeze(-1)
        emb = torch.where(lab == -1, pe.not_a_point_embed.weight.view(1, 1, -1), emb)
        for k in range(4):
            emb = emb + (lab == k).to(emb.dtype) * pe.point_embeddings[k].weight.view(1, 1, -1)
        return emb

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> low-res logits (P, 4, m, m) of every mask token and their IoU predictions (P, 4)."""
        pe = self.prompt_encoder
        sparse = self.embed_prompts(point_coords, point_labels)
        dense = pe.mask_downscaling(mask_input) * has_mask_input.view(1, 1, 1, 1)
        dense = dense + (1 - has_mask_input.view(1, 1, 1, 1)) * pe.no_mask_embed.weight.view(1, -1, 1, 1)
        image_pe = pe.get_dense_pe()
        if self.fast:
            return fast_mask_decode(self.mask_decoder, image_embeddings, image_pe, sparse, dense, None)
        return self.mask_decoder.predict_masks(image_embeddings, image_pe, sparse, dense)


@contextlib.contextmanager
def _eager_kernels() -> Iterator[None]:
    """oneDNN fused kernels are not ONNX operators: trace the plain torch path they replace."""
    from medsamkit.models import onednn

    saved = {n: getattr(onednn, n) for n in ("FUSED_CONV", "FUSED_LINEAR")}
    for n in saved:
        setattr(onednn, n, None)
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(onednn, n, v)


def export_onnx(model: SamFamilyModel, out: str | Path, opset: int = OPSET, name: str | None = None) -> dict:
    """Write encoder.onnx, decoder.onnx and export.json (geometry + preprocessing) into folder `out`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().to("cpu")
    s = model.preprocessing.input_size
    m = model.mask_input_size
    image = torch.rand(1, 3, s, s)
    with torch.no_grad():
        emb = model.encode(image)
    # P = 2 prompts of 3 points while tracing, so that batch and point axes are traced as dynamic sizes.
    coords = torch.rand(2, 3, 2) * s
    labels = torch.tensor([[1, 2, 3], [0, 1, -1]], dtype=torch.float32)
    mask = torch.zeros(2, 1, *m)
    has_mask = torch.zeros(1)
    with warnings.catch_warnings(), torch.no_grad(), _eager_kernels():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks turned into constants
        torch.onnx.export(
            model.image_encoder, (image,), out / ENCODER_FILE, input_names=["image"], output_names=["embedding"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=opset, dynamo=False,
        )
        torch.onnx.export(
            PromptDecoder(model), (emb, coords, labels, mask, has_mask), out / DECODER_FILE,
            input_names=["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
            output_names=["low_res_logits", "iou_predictions"],
            dynamic_axes={"point_coords": {0: "prompts", 1: "points"}, "point_labels": {0: "prompts", 1: "points"},
                          "mask_input": {0: "prompts"}, "low_res_logits": {0: "prompts"},
                          "iou_predictions": {0: "prompts"}},
            opset_version=opset, dynamo=False,
        )
    meta = {
        "model": name or model.name,
        "preprocessing": asdict(model.preprocessing),
        "embedding_shape": list(emb.shape[1:]),
        "mask_input_size": list(m),
        "point_prompts": bool(model.point_prompts),
        "click_strategy": getattr(model, "click_strategy", None),
        "opset": opset,
        "encoder": ENCODER_FILE,
        "decoder": DECODER_FILE,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return {**meta, "out": str(out),
            "bytes": {f: (out / f).stat().st_size for f in (ENCODER_FILE, DECODER_FILE)}}
