"""Prompted segmentation: embed an image once, then answer any number of box/point/mask prompts in batches.

Coordinates are pixel indices of the original image: boxes [x0, y0, x1, y1], points (x, y).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medsamkit.core.errors import InputError, where
from medsamkit.models.sam import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    SamFamilyModel,
    medsam_masks,
    medsam_resize,
)


@dataclass
class Embedding:
    """An image embedding with the geometry needed to map prompts in and masks out."""

    features: torch.Tensor  # (1, 256, h, w)
    original_size: tuple[int, int]  # (H, W) of the image
    input_size: tuple[int, int]  # (h, w) of the resized image inside the model input


@dataclass
class Prediction:
    """Outputs for P prompts with C masks each (C = 3 with multimask, else 1)."""

    masks: np.ndarray  # (P, C, H, W) bool, original resolution
    iou: np.ndarray  # (P, C) predicted IoU
    low_res_logits: np.ndarray  # (P, C, m, m) logits in the model-input frame (mask prompts)
    ranked: bool = False  # candidates already ordered best first (the click search), not by predicted IoU

    def best(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per prompt, the best mask (highest predicted IoU, or the first when ranked): masks (P,H,W), iou
        (P,), logits (P,m,m)."""
        idx = np.zeros(len(self.iou), dtype=int) if self.ranked else self.iou.argmax(axis=1)
        rows = np.arange(len(idx))
        return self.masks[rows, idx], self.iou[rows, idx], self.low_res_logits[rows, idx]


def as_rgb_float(image: np.ndarray, source: object | None = None) -> np.ndarray:
    """Validate an image (grey/RGB/RGBA, any numeric dtype) and return it as float32 (H, W, 3)."""
    arr = np.asarray(image)
    if arr.size == 0 or arr.ndim not in (2, 3):
        raise InputError(f"{where(source)}expected a 2D grey/RGB/RGBA image, got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4):
        raise InputError(f"{where(source)}expected 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{where(source)}unsupported image dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InputError(f"{where(source)}image contains {int(bad.any(-1).sum())} NaN/inf pixels")
    if min(arr.shape[:2]) < 2:
        raise InputError(f"{where(source)}image too small: {arr.shape[:2]}")
    return np.ascontiguousarray(arr)


def resized_size(pre: Preprocessing, h: int, w: int) -> tuple[int, int]:
    """(h, w) of the image inside the model input."""
    if pre.resize == "square":
        return pre.input_size, pre.input_size
    scale = pre.input_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def preprocess(pre: Preprocessing, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """float32 (H,W,3) image -> model input (1,3,S,S) and the resized (h, w) inside it."""
    h, w = image.shape[:2]
    nh, nw = resized_size(pre, h, w)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    if pre.interpolation == "medsam":
        x = medsam_resize(image, (nh, nw))
    elif (nh, nw) != (h, w):
        mode = pre.interpolation
        if mode == "area" and (nh > h or nw > w):
            mode = "bilinear"  # area averaging only defines downscaling
        kwargs = {} if mode == "area" else {"align_corners": False, "antialias": nh < h or nw < w}
        x = F.interpolate(x, size=(nh, nw), mode=mode, **kwargs)
    if pre.normalize == "minmax":
        lo, hi = x.amin(), x.amax()
        x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
    else:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
    s = pre.input_size
    x = F.pad(x, (0, s - nw, 0, s - nh))
    return x.contiguous(), (nh, nw)


class Predictor:
    """`set_image(img)` computes the embedding once; `predict(...)` answers any number of prompts."""

    def __init__(self, model: SamFamilyModel, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self.embedding: Embedding | None = None
        self.image: np.ndarray | None = None  # the embedded image where the caller gave it (clicks refine on it)
        self._source: object | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def embed(self, image: np.ndarray, source: object | None = None) -> Embedding:
        """Validate, preprocess and encode one image (no state change)."""
        img = as_rgb_float(image, source)
        x, input_size = preprocess(self.model.preprocessing, img)
        feats = self.model.encode(x.to(self.device))
        return Embedding(feats, img.shape[:2], input_size)

    def set_image(self, image: np.ndarray, source: object | None = None) -> Predictor:
        """Compute and keep the embedding of `image` (source names it in error messages)."""
        self.embedding = self.embed(image, source)
        self.image = image
        self._source = source
        return self

    def set_embedding(self, embedding: Embedding, source: object | None = None,
                      image: np.ndarray | None = None) -> Predictor:
        """Use a precomputed (e.g. cached) embedding; ``image``: the image it embeds (the click corrections refine
        small objects on its grey levels; without it they do not)."""
        self.embedding = Embedding(embedding.features.to(self.device), embedding.original_size, embedding.input_size)
        self.image = image if image is not None and tuple(image.shape[:2]) == tuple(embedding.original_size) else None
        self._source = source
        return self

    # --- prompt checking and mapping -------------------------------------------------------------
    def coordinate_scale(self) -> np.ndarray:
        """(sx, sy): multiply image-pixel (x, y) by this to get model-input coordinates of the current image."""
        assert self.embedding is not None
        (h, w), (nh, nw) = self.embedding.original_size, self.embedding.input_size
        return np.array([nw / w, nh / h], dtype=np.float32)

    def check_prompts(self, boxes: object | None = None, points: object | None = None,
                      point_labels: object | None = None) -> None:
        """Refuse prompts ``predict`` would refuse (one-line InputError: shape, NaN, outside the image, labels)
        without running the model; for callers that answer clicks another way (``prompts.clicks``)."""
        if boxes is not None:
            self._check_boxes(boxes)
        if points is not None:
            self._check_points(points, point_labels)

    def _check_boxes(self, boxes: object) -> np.ndarray:
        b = np.asarray(boxes, dtype=np.float32)
        if b.ndim == 1:
            b = b[None]
        if b.ndim != 2 or b.shape[1] != 4:
            raise InputError(f"{where(self._source)}boxes must be [x0, y0, x1, y1] rows, got shape {b.shape}")
        h, w = self.embedding.original_size
        for box in b:
            if not np.isfinite(box).all():
                raise InputError(f"{where(self._source)}box {box.tolist()} contains NaN/inf")
            if box[2] < box[0] or box[3] < box[1]:
                raise InputError(f"{where(self._source)}box {box.tolist()} is inverted (needs x0<=x1, y0<=y1)")
            if box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
                raise InputError(
                    f"{where(self._source)}box {box.tolist()} lies outside the image (width {w}, height {h})"
                )
        return b

    def _check_points(self, points: object, labels: object | None) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(points, dtype=np.float32)
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3 or p.shape[-1] != 2:
            raise InputError(f"{where(self._source)}points must be (x, y) pairs, got shape {p.shape}")
        if labels is None:
            lab = np.ones(p.shape[:2], dtype=np.int64)
        else:
            lab = np.asarray(labels).astype(np.int64).reshape(p.shape[:2])
        h, w = self.embedding.original_size
        valid = lab >= 0  # -1 marks padding inside a batch
        if not np.isfinite(p).all():
            raise InputError(f"{where(self._source)}points contain NaN/inf")
        inside = (p[..., 0] >= 0) & (p[..., 0] <= w) & (p[..., 1] >= 0) & (p[..., 1] <= h)
        if (valid & ~inside).any():
            bad = p[valid & ~inside][0].tolist()
            raise InputError(f"{where(self._source)}point {bad} lies outside the image (width {w}, height {h})")
        if not np.isin(lab, (-1, 0, 1)).all():
            raise InputError(f"{where(self._source)}point labels must be 1 (foreground) or 0 (background)")
        return p, lab

    @torch.inference_mode()
    def predict(
        self,
        boxes: object | None = None,
        points: object | None = None,
        point_labels: object | None = None,
        mask_input: object | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """Segment P prompts at once.

        boxes (P,4) or (4,); points (P,N,2) or (N,2) with point_labels (P,N)/(N,) (1 fg, 0 bg, -1 pad);
        mask_input (P,1,m,m) low-res logits from an earlier prediction. With both, P must match.
        """
        if self.embedding is None:
            raise InputError("no image set: call set_image() first")
        if boxes is None and points is None and mask_input is None:
            raise InputError(f"{where(self._source)}no prompt given (a box, a point or a mask input)")
        b = self._check_boxes(boxes) if boxes is not None else None
        p, lab = self._check_points(points, point_labels) if points is not None else (None, None)
        m = None
        if mask_input is not None:
            m = np.asarray(mask_input, dtype=np.float32)
            m = m.reshape((-1, 1) + m.shape[-2:])
            if m.shape[-2:] != self.model.mask_input_size:
                raise InputError(f"mask_input must be {self.model.mask_input_size} low-res logits, got {m.shape}")
        counts = {len(x) for x in (b, p, m) if x is not None}
        if len(counts) > 1:
            raise InputError(f"{where(self._source)}boxes, points and mask inputs disagree in number of prompts")
        n = counts.pop()
        outs = [
            self._predict_batch(
                None if b is None else b[i : i + self.batch_size],
                None if p is None else (p[i : i + self.batch_size], lab[i : i + self.batch_size]),
                None if m is None else m[i : i + self.batch_size],
                multimask,
            )
            for i in range(0, n, self.batch_size)
        ]
        return Prediction(*(np.concatenate([o[k] for o in outs]) for k in range(3)))

    def _predict_batch(self, boxes, points, masks, multimask: bool):
        emb = self.embedding
        dev = self.device
        scale = self.coordinate_scale()
        bt = torch.from_numpy(boxes * np.tile(scale, 2)).to(dev) if boxes is not None else None
        pt = None
        if points is not None:
            coords, labels = points
            pt = (torch.from_numpy(coords * scale).to(dev), torch.from_numpy(labels).to(dev))
        mt = torch.from_numpy(masks).to(dev) if masks is not None else None
        low, iou = self.model.decode(emb.features, pt, bt, mt, multimask)
        masks_full = self.postprocess(low)
        return masks_full.cpu().numpy(), iou.float().cpu().numpy(), low.float().cpu().numpy()

    def postprocess(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits (P,C,m,m) -> boolean masks (P,C,H,W) at the original resolution."""
        emb = self.embedding
        if self.model.preprocessing.interpolation == "medsam":
            return medsam_masks(low_res.float(), emb.original_size)
        s = self.model.preprocessing.input_size
        return upscale_logits(low_res.float(), s, emb.input_size, emb.original_size) > 0


def upscale_logits(low: torch.Tensor, input_size: int, resized: tuple[int, int],
                   shape: tuple[int, int]) -> torch.Tensor:
    """Low-res logits (P,C,m,m) -> logits (P,C,H,W) on the image of `shape` (unthresholded, differentiable).

    Up to the model input (S,S), crop the resized image's (h, w), then resize to the image: the one mapping
    of masks out of the model, shared by the predictor and fine-tuning's losses.
    """
    x = low
    if x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    if tuple(x.shape[-2:]) != tuple(shape):
        x = F.interpolate(x, size=tuple(shape), mode="bilinear", align_corners=False)
    return x
