"""One training step's loss for a batch of objects of one tile, with simulated prompts.

Every object draws a prompt mode; iterative modes first simulate corrective clicks with the model's own
detached predictions through the one click loop (``medsamkit.prompts.ClickSession``), feeding the previous
low-res logits back as the mask prompt (SAM-Med2D style). The loss (BCE + Dice on the single-mask output
and on the best of the three multimask outputs, + MSE of the predicted IoU, + cross-entropy of the class
head) trains the outputs both `multimask` settings of the predictor use.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsamkit.models.fast_decode import fast_decoder_supported, fast_mask_decode
from medsamkit.models.finetuned import ClassHeadMaskDecoder
from medsamkit.models.sam import SamFamilyModel
from medsamkit.predictor import upscale_logits
from medsamkit.prompts import ClickSession, Prompt, PromptMode, parse_mode, stack_prompts

BOX = parse_mode("box")


def decode_all(model: SamFamilyModel, features: torch.Tensor, points, boxes, masks
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """All four mask outputs (P,4,m,m) (0: single-mask, 1-3: multimask), IoU (P,4), class logits or None.

    A plain official decoder runs re-associated (fast_mask_decode), with or without autograd: the same
    outputs and gradients (to float rounding) at about a third of the time of predict_masks.
    """
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
    pe = model.prompt_encoder.get_dense_pe()
    dec = model.mask_decoder
    if isinstance(dec, ClassHeadMaskDecoder):
        return dec.predict_all(features, pe, sparse, dense)
    if model.use_fast_decoder and features.shape[0] == 1 and fast_decoder_supported(dec):
        low, iou = fast_mask_decode(dec, features, pe, sparse, dense if masks is not None else dense[:1], None)
        return low, iou, None
    low, iou = dec.predict_masks(image_embeddings=features, image_pe=pe, sparse_prompt_embeddings=sparse,
                                 dense_prompt_embeddings=dense)
    return low, iou, None


def prompt_tensors(prompts: list[Prompt], scale: np.ndarray, device: torch.device):
    """Points (padded with label -1, as the evaluate engine does) and boxes in the model-input frame."""
    arrays = stack_prompts(prompts)
    boxes = None
    if "boxes" in arrays:
        boxes = torch.from_numpy(arrays["boxes"] * np.tile(scale, 2)).to(device)
    points = None
    if "points" in arrays:
        points = (torch.from_numpy(arrays["points"] * scale).to(device),
                  torch.from_numpy(arrays["point_labels"]).to(device))
    return points, boxes


def segmentation_losses(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice per object and mask: logits (P,C,H,W), truth (P,1,H,W) float -> (P,C)."""
    target = truth.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((2, 3))
    prob = logits.sigmoid()
    inter = (prob * target).sum((2, 3))
    soft_dice = (2 * inter + 1) / (prob.sum((2, 3)) + target.sum((2, 3)) + 1)
    return bce + (1 - soft_dice)


class TileGeometry:
    """How prompts enter and masks leave the model for one tile: its shape and its resized size."""

    def __init__(self, model: SamFamilyModel, resized: tuple[int, int], shape: tuple[int, int]) -> None:
        self.input_size = model.preprocessing.input_size
        self.resized = tuple(resized)
        self.shape = tuple(shape)
        self.scale = np.array([resized[1] / shape[1], resized[0] / shape[0]], dtype=np.float32)

    def logits(self, low: torch.Tensor) -> torch.Tensor:
        """Low-res logits -> logits on the tile (the predictor's postprocess, unthresholded)."""
        return upscale_logits(low, self.input_size, self.resized, self.shape)


def session_inputs(session: ClickSession, geometry: TileGeometry, device: torch.device):
    """(points, boxes, mask prompt) tensors of every object of the session for the next model call."""
    prompts, mask_input = session.inputs(list(range(len(session.prompts))))
    points, boxes = prompt_tensors(prompts, geometry.scale, device)
    masks = None if mask_input is None else torch.from_numpy(mask_input).to(device)
    return points, boxes, masks


@torch.no_grad()
def click_step(model: SamFamilyModel, features: torch.Tensor, session: ClickSession, geometry: TileGeometry) -> None:
    """One simulated click for every object of the session with the model's single-mask prediction.

    Every object is recorded, an exact one too (it is fed again with its prompt unchanged), as the
    evaluate engine's multimask-off predictor answers it.
    """
    points, boxes, masks = session_inputs(session, geometry, features.device)
    low, iou, _ = decode_all(model, features.detach(), points, boxes, masks)
    single = low[:, :1].float()
    pred = (geometry.logits(single)[:, 0] > 0).cpu().numpy()
    idx = list(range(len(session.prompts)))
    session.record(idx, pred, iou[:, 0].float().cpu().numpy(), single[:, 0].cpu().numpy())
    session.advance()


def object_losses(model: SamFamilyModel, features: torch.Tensor, session: ClickSession, geometry: TileGeometry,
                  truths: list[np.ndarray], classes: list[int] | None) -> torch.Tensor:
    """Per-object loss (P,) of the trained call on the session's current prompts and mask prompts."""
    dev = features.device
    points, boxes, masks = session_inputs(session, geometry, dev)
    low, iou_pred, class_logits = decode_all(model, features, points, boxes, masks)
    logits = geometry.logits(low)
    truth = torch.from_numpy(np.stack(truths)[:, None]).to(dev, logits.dtype)
    seg = segmentation_losses(logits, truth)
    with torch.no_grad():
        hard = logits > 0
        inter = (hard & (truth > 0)).sum((2, 3)).float()
        union = (hard | (truth > 0)).sum((2, 3)).float().clamp(min=1)
        actual_iou = inter / union
    per_object = seg[:, 0] + seg[:, 1:].min(dim=1).values + ((iou_pred - actual_iou) ** 2).mean(1)
    if class_logits is not None:
        target = torch.tensor(classes, device=dev)
        per_object = per_object + F.cross_entropy(class_logits, target, reduction="none")
    return per_object


class Objective(nn.Module):
    """One step's loss for a batch of objects of one tile (a module so DDP can wrap it)."""

    def __init__(self, model: SamFamilyModel, modes: list[PromptMode], box_anchor: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.modes = modes
        self.box_anchor = float(box_anchor)  # weight of a tight-box loss on every object (0: none)

    def forward(self, tile_input: torch.Tensor, is_features: bool, resized: tuple[int, int],
                truths: list[np.ndarray], classes: list[int], rng: np.random.Generator) -> torch.Tensor:
        """Mean loss over the objects; ``rng`` draws their modes, first prompts and clicks, in that order."""
        model = self.model
        feats = tile_input if is_features else model.encode(tile_input)
        shape = truths[0].shape
        geometry = TileGeometry(model, resized, shape)
        mode_idx = rng.integers(len(self.modes), size=len(truths))
        total = feats.new_zeros(())
        for mi in sorted(set(mode_idx.tolist())):
            idx = np.flatnonzero(mode_idx == mi)
            mode = self.modes[mi]
            mine = [truths[i] for i in idx]
            session = ClickSession(mode, mine, [rng] * len(idx), shape)  # one generator: today's draw order
            n_pre = int(rng.integers(mode.n_steps)) if mode.n_steps > 1 else 0  # clicks simulated before
            for _ in range(n_pre):
                click_step(model, feats, session, geometry)
            mine_classes = [classes[i] for i in idx] if classes else None
            total = total + object_losses(model, feats, session, geometry, mine, mine_classes).sum()
        if self.box_anchor > 0:  # every object also prompted with its tight box: box answers stay put
            session = ClickSession(BOX, truths, [rng] * len(truths), shape)
            anchor = object_losses(model, feats, session, geometry, truths, classes or None).sum()
            total = total + self.box_anchor * anchor
        return total / len(truths)
