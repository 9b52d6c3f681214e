"""Fine-tuned models: the class-head mask decoder, applying a recorded fine-tuning recipe, loading a run.

A run checkpoint (medsamkit.training) stores only what differs from the base model (decoder, prompt
encoder, PEFT and class-head weights) with the recipe; `load_finetuned` rebuilds the base model from the
registry (``models.loading``), and `apply_finetuned` re-applies the recipe to it and loads those weights strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medsamkit.core.errors import InputError
from medsamkit.models.checkpoints import load_strict
from medsamkit.models.peft import add_adapters, add_lora, is_peft_parameter, merge_lora
from medsamkit.models.sam import CLICK_STRATEGIES, SamFamilyModel
from medsamkit.models.sam_modules import sam_modeling

CHECKPOINT_FORMAT = "medsamkit-finetune/1"
MaskDecoder = sam_modeling().MaskDecoder


class ClassHeadMaskDecoder(MaskDecoder):
    """SAM's mask decoder with one more output token whose transformer output an MLP maps to class logits.

    Reuses the base decoder's modules (same state-dict names) and adds `class_token` and `class_head`.
    `predict_masks` keeps the official signature and outputs, so predictors and evaluation work unchanged.
    """

    def __init__(self, base: nn.Module, n_classes: int, hidden: int = 256) -> None:
        nn.Module.__init__(self)
        for name, child in base.named_children():
            setattr(self, name, child)
        self.transformer_dim = base.transformer_dim
        self.num_multimask_outputs = base.num_multimask_outputs
        self.num_mask_tokens = base.num_mask_tokens
        self.n_classes = n_classes
        ref = base.iou_token.weight
        self.class_token = nn.Embedding(1, self.transformer_dim).to(ref.device, ref.dtype)
        self.class_head = nn.Sequential(
            nn.Linear(self.transformer_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
        ).to(ref.device, ref.dtype)

    def predict_all(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                    sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All mask-token masks (P,4,m,m), their IoU predictions (P,4) and class logits (P,K)."""
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight, self.class_token.weight], dim=0)
        n = sparse_prompt_embeddings.size(0)
        tokens = torch.cat((out_tokens.unsqueeze(0).expand(n, -1, -1), sparse_prompt_embeddings), dim=1)
        src = torch.repeat_interleave(image_embeddings, n, dim=0) + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, n, dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        upscaled = self.output_upscaling(src.transpose(1, 2).view(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        iou_pred = self.iou_prediction_head(hs[:, 0])
        class_logits = self.class_head(hs[:, 1 + self.num_mask_tokens])
        return masks, iou_pred, class_logits

    def predict_masks(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings):
        masks, iou_pred, _ = self.predict_all(image_embeddings, image_pe, sparse_prompt_embeddings,
                                              dense_prompt_embeddings)
        return masks, iou_pred


def apply_recipe(model: SamFamilyModel, recipe: dict) -> dict[str, int]:
    """Make `model` trainable as recorded: mode decoder|adapter|lora (+ class head); returns parameter counts.

    recipe keys: mode, adapter_bottleneck, lora_rank, lora_alpha, lora_targets, train_decoder, classes (names).
    """
    mode = recipe["mode"]
    for p in model.parameters():
        p.requires_grad_(False)
    added = 0
    if mode == "adapter":
        added = add_adapters(model.image_encoder, int(recipe["adapter_bottleneck"]))
    elif mode == "lora":
        added = add_lora(model.image_encoder, int(recipe["lora_rank"]), float(recipe["lora_alpha"]),
                         tuple(recipe["lora_targets"]))
    elif mode != "decoder":
        raise InputError(f"unknown fine-tuning mode {mode!r}; choose decoder, adapter or lora")
    if mode == "decoder" or recipe.get("train_decoder"):
        for part in (model.prompt_encoder, model.mask_decoder):
            for p in part.parameters():
                p.requires_grad_(True)
    classes = list(recipe.get("classes") or [])
    if classes:
        model.mask_decoder = ClassHeadMaskDecoder(model.mask_decoder, len(classes))
        for p in list(model.mask_decoder.class_token.parameters()) + list(model.mask_decoder.class_head.parameters()):
            p.requires_grad_(True)
    model.class_names = classes
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"added": added, "trainable": trainable, "total": total}


def finetuned_state(model: SamFamilyModel, recipe: dict) -> dict[str, torch.Tensor]:
    """The weights a run saves: decoder + prompt encoder when trained, PEFT and class-head parameters."""
    trained_decoder = recipe["mode"] == "decoder" or recipe.get("train_decoder")
    out = {}
    for name, t in model.state_dict().items():
        top = name.split(".", 1)[0]
        if (trained_decoder and top in ("prompt_encoder", "mask_decoder")) or is_peft_parameter(name) \
                or name.startswith(("mask_decoder.class_token.", "mask_decoder.class_head.")):
            out[name] = t.detach().clone()
    return out


def run_checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file a fine-tuning path means: the file itself, or a run folder's best.pt."""
    path = Path(path)
    return path / "best.pt" if path.is_dir() else path


def read_run_checkpoint(path: str | Path) -> dict:
    """A fine-tuning checkpoint as a dict (weights_only load); a run folder means its best.pt."""
    path = run_checkpoint_file(path)
    if not path.is_file():
        raise InputError(f"{path}: fine-tuned checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path}: unreadable fine-tuning checkpoint ({first[:160]})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a medsamkit fine-tuning checkpoint (format {CHECKPOINT_FORMAT})")
    obj["path"] = str(path)
    return obj


def apply_finetuned(model: SamFamilyModel, ckpt: dict) -> SamFamilyModel:
    """Apply a fine-tuning checkpoint (``read_run_checkpoint``) to the base model it names, handed in
    already loaded: re-apply the recipe, load the run's weights strictly, record what it answers (eval mode).
    LoRA is merged into the encoder's weights (plain Linear layers: no inference cost over the base model)."""
    recipe = ckpt["recipe"]
    apply_recipe(model, recipe)
    state = ckpt["model"]
    # strict over exactly the saved part: every trained tensor present, nothing else, same shapes
    load_strict(_StateView(finetuned_state(model, recipe)), state, ckpt["path"],
                f"{ckpt['base_model']} + {recipe['mode']} run")
    model.load_state_dict(state, strict=False)
    merge_lora(model.image_encoder)
    for p in model.parameters():
        p.requires_grad_(False)
    model.finetuned_from = ckpt["path"]
    model.point_prompts = bool(model.point_prompts or trained_on_points(ckpt))
    # the click strategy the run's validation found better for these weights (runs before it: None)
    model.click_strategy = ckpt.get("clicks") if ckpt.get("clicks") in CLICK_STRATEGIES else None
    return model.eval()


def trained_on_points(ckpt: dict) -> bool:
    """Whether the run was trained with point prompts (its recorded prompt modes include clicks/points)."""
    from medsamkit.core.prompt_modes import parse_modes

    prompts = ckpt["recipe"].get("prompts") or (ckpt.get("config") or {}).get("prompts") or ""
    return bool(prompts) and any(m.n_points > 0 for m in parse_modes(prompts))


class _StateView(nn.Module):
    """A module whose state dict is a given dict of tensors, so load_strict can compare against it."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._view = state

    def state_dict(self, *args, **kwargs):  # noqa: D102
        return self._view

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):  # noqa: D102
        return None
