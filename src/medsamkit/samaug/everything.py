"""Everything mode: masks for all objects of an image from a prompt-only SAM-family model (SAMAug step 1).

Large images are cut into native-resolution tiles (``tiling.grid_windows``); each tile is encoded once and
prompted with a grid of points (point-capable models, as SAM's automatic mask generator; on a box-only model
each point is answered by the click search of ``prompts.search`` with a small box set), a grid of boxes
(box-only models, the paper-style naive grid) or boxes around cheap classical blob proposals (box-only
models, the default: far fewer prompts for better recall on nuclei). Masks are filtered by predicted IoU,
stability score and area, then de-duplicated by box NMS across the whole image. Box prompts are decoded
on a window of the embedding around each box (`models.local_decode`: ~4x cheaper per prompt on CPU, same model).
Blob proposals are made once on the whole image and each is decoded in the tile holding it most centrally;
masks touching a tile edge inside the image are dropped (a neighbouring tile holds that region whole).

The prompt layouts themselves live in ``medsamkit.samaug.proposals``.

Stability score: IoU of (logits > +offset) and (logits > -offset), computed on the mask logits at TILE
resolution (the decoder's low-res logits resampled to the tile's pixels), as SAM does on full-res logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medsamkit.core.errors import InputError
from medsamkit.core.tiling import grid_windows
from medsamkit.models.local_decode import decode_local, window_tokens
from medsamkit.predictor import Predictor, as_rgb_float
from medsamkit.prompts.ranking import HAND_RANKER
from medsamkit.prompts.search import search_many, sharpen
from medsamkit.prompts.search_settings import SearchSettings
from medsamkit.samaug.nms import nms
from medsamkit.samaug.proposals import assign_to_windows, blob_proposals, expand_boxes, grid_boxes, point_grid

PROPOSALS = ("auto", "blobs", "grid", "points")


@dataclass
class MaskRecord:
    """One everything-mode mask, stored as its crop inside its inclusive box to save memory."""

    crop: np.ndarray  # bool (y1 - y0 + 1, x1 - x0 + 1): the mask inside `box`
    box: tuple[int, int, int, int]  # [x0, y0, x1, y1] inclusive, full-image pixels
    area: int
    predicted_iou: float
    stability_score: float

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask pasted into a full image of `shape` (bool)."""
        out = np.zeros(shape[:2], dtype=bool)
        x0, y0, x1, y1 = self.box
        out[y0 : y1 + 1, x0 : x1 + 1] = self.crop
        return out


@dataclass
class EverythingConfig:
    """Everything-mode settings; thresholds follow the SAMAug paper / SAM's generator unless noted."""

    proposal: str = "auto"  # auto (points if the model takes points, else blobs) | blobs | grid | points
    pred_iou_thresh: float = 0.5  # SAMAug paper
    # Below SAM's 0.95: LiteMedSAM's nucleus masks score a median 0.73 at offset 1 (small objects have a large
    # boundary share); 0.6 keeps ~3/4 of the nuclei, 0.8 only a quarter (benchmarks/priors_speed.py).
    stability_thresh: float = 0.6
    stability_offset: float = 1.0  # SAM default
    box_nms_thresh: float = 0.5  # SAMAug paper, within and across tiles
    min_area: int = 20  # pixels; smaller masks are noise at MoNuSeg's 40x
    max_area: int | None = 3000  # pixels; None keeps any size
    tile_size: int = 256  # native-resolution tiles; 0: the whole image as one tile (resized by the model)
    tile_overlap: int = 48  # > a large nucleus, so every object lies whole inside some tile
    # Points mode, per tile: 16 per 256 px tile is a point every 16 px (SAM: 32 per whole image), the densest
    # grid that keeps a 1000x1000 image (25 tiles) under 60 s on 2 cores: per MoNuSeg tile, every mask kept,
    # 16/tile with 16-token windows costs 2.9 CPU-s (encoder 1.45), 32/tile 7.5, 16/tile on the whole
    # embedding 16.4 s (benchmarks/priors_speed.py).
    points_per_side: int = 16
    grid_box_sizes: tuple[int, ...] = (16, 24, 32)  # grid mode: box sides in pixels
    grid_stride: int = 16  # grid mode: box centre spacing in pixels
    blob_min_distance: int = 4  # blobs mode: min distance between nucleus seeds (pixels)
    blob_pads: tuple[int, ...] = (3,)  # blobs mode: one box per proposal per padding (pixels added around it)
    local_decode: bool = True  # decode each BOX on an embedding window around it (much cheaper on CPU)
    window_tokens: int = 16  # smallest decoding window, in embedding tokens (grows with the prompt size)
    # Points mode: decode each point on a window of this many tokens around it (None: the whole embedding).
    # A point says nothing of its object's size, so the window must hold the largest object: 16 tokens = a
    # quarter of a 256 px tile (64 px, > a nucleus); glands on one whole-image tile need 32.
    point_window_tokens: int | None = 16
    # Points mode on a box-only model: the click search's box sides (model-input px, square boxes) per point;
    # 4 boxes keep a 256 px tile at ~1000 windowed decodes.
    point_search_sides: tuple[float, ...] = (8, 16, 32, 64)
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.proposal not in PROPOSALS:
            raise InputError(f"unknown proposal {self.proposal!r}; choose one of: {', '.join(PROPOSALS)}")
        if not 0 <= self.pred_iou_thresh <= 1 or not 0 <= self.stability_thresh <= 1:
            raise InputError("pred-IoU and stability thresholds must be in [0, 1]")
        if self.point_window_tokens is not None and self.point_window_tokens < 4:
            raise InputError(f"point window {self.point_window_tokens} tokens is too small (>= 4, or whole)")
        whole = self.tile_size == 0
        if not whole and (self.tile_size < 32 or not 0 <= self.tile_overlap < self.tile_size):
            raise InputError(f"tile size {self.tile_size} / overlap {self.tile_overlap} not usable")


def stability_score(logits: torch.Tensor | np.ndarray, offset: float = 1.0, threshold: float = 0.0) -> np.ndarray:
    """IoU of (logits > threshold + offset) and (logits > threshold - offset) per mask over the last two axes.

    The first set is inside the second, so IoU = |high| / |low|; an empty low set scores 0.
    """
    x = torch.as_tensor(logits)
    high = (x > threshold + offset).flatten(-2).sum(-1).double()
    low = (x > threshold - offset).flatten(-2).sum(-1).double()
    score = torch.where(low > 0, high / low.clamp(min=1), torch.zeros_like(low))
    return score.cpu().numpy()


def model_takes_points(predictor: Predictor) -> bool:
    """Whether the predictor's model answers point prompts: point-capable registry models, and fine-tuned
    runs trained with points (the model records it; a fine-tuned LiteMedSAM keeps the name `litemedsam`)."""
    return bool(getattr(predictor.model, "point_prompts", False))


def resolve_proposal(predictor: Predictor, cfg: EverythingConfig) -> str:
    """The proposal mode to use: `auto` -> points for point-capable models, blobs for box-only ones."""
    if cfg.proposal != "auto":
        return cfg.proposal
    return "points" if model_takes_points(predictor) else "blobs"


@dataclass
class _TileGeometry:
    """Maps low-res logits of a tile to the tile's pixels."""

    low_to_tile: tuple[float, float]  # tile pixels per low-res pixel along (y, x)
    tile_shape: tuple[int, int]


def _geometry(predictor: Predictor) -> _TileGeometry:
    emb = predictor.embedding
    s = predictor.model.preprocessing.input_size
    m = predictor.model.mask_input_size[0]
    (h, w), (nh, nw) = emb.original_size, emb.input_size
    return _TileGeometry(((s / m) * (h / nh), (s / m) * (w / nw)), (h, w))


def _records_from_logits(
    logits: torch.Tensor,
    iou: torch.Tensor,
    origin: np.ndarray,
    geo: _TileGeometry,
    tile_origin: tuple[int, int],
    cfg: EverythingConfig,
) -> list[MaskRecord]:
    """Filter (P,C,L,L) logits whose top-left is `origin` (P,2 low-res x,y) into records in image pixels."""
    flat_iou = iou.flatten().float().cpu().numpy()
    p_idx = np.arange(flat_iou.size) // iou.shape[1]
    keep = flat_iou > cfg.pred_iou_thresh  # cheap filter before any resampling
    if not keep.any():
        return []
    sel = torch.from_numpy(np.nonzero(keep)[0])
    x = logits.flatten(0, 1)[sel].float()
    fy, fx = geo.low_to_tile
    size = (int(round(x.shape[-2] * fy)), int(round(x.shape[-1] * fx)))
    if size != tuple(x.shape[-2:]):
        x = F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    h, w = geo.tile_shape
    ty, tx = tile_origin
    records = []
    for k, i in enumerate(sel.tolist()):
        ox, oy = int(round(origin[p_idx[i], 0] * fx)), int(round(origin[p_idx[i], 1] * fy))
        logit = x[k, : max(h - oy, 0), : max(w - ox, 0)]  # drop the model input's padding
        stab = float(stability_score(logit, cfg.stability_offset))
        if stab < cfg.stability_thresh:
            continue
        m = (logit > 0).cpu().numpy()
        area = int(m.sum())
        if area == 0 or area < cfg.min_area or (cfg.max_area is not None and area > cfg.max_area):
            continue
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
        box = (int(c0 + ox + tx), int(r0 + oy + ty), int(c1 + ox + tx), int(r1 + oy + ty))
        records.append(MaskRecord(m[r0 : r1 + 1, c0 : c1 + 1].copy(), box, area, float(flat_iou[i]), stab))
    return records


def _touches_inner_border(box: tuple[int, int, int, int], win: tuple[int, int, int, int], shape) -> bool:
    """Whether a mask box touches a tile edge that is not the image edge (another tile covers it whole)."""
    x0, y0, x1, y1 = box
    wy0, wx0, wy1, wx1 = win
    h, w = shape[:2]
    return (
        (x0 <= wx0 and wx0 > 0) or (y0 <= wy0 and wy0 > 0) or (x1 >= wx1 - 1 and wx1 < w) or (y1 >= wy1 - 1 and wy1 < h)
    )


def _decode_tile(predictor: Predictor, prompts: np.ndarray, kind: str, cfg: EverythingConfig, win) -> list[MaskRecord]:
    """Decode box or point prompts (tile pixels) on the current embedding; filtered records in image pixels."""
    model = predictor.model
    dev = predictor.device
    scale = predictor.coordinate_scale()
    geo = _geometry(predictor)
    multimask = kind == "points"
    grid = predictor.embedding.features.shape[-1]
    stride = model.preprocessing.input_size / grid
    records: list[MaskRecord] = []
    if kind == "points" and not model_takes_points(predictor):
        return _searched_points(predictor, prompts, cfg, win)
    if kind == "points":
        sizes = np.zeros(len(prompts))
    else:
        sizes = (prompts[:, 2:] - prompts[:, :2] + 1).max(axis=1) * scale.max() / stride
    # A window twice the prompt (in tokens, rounded up to 8) keeps the object's context; grouped for batching.
    windows = window_tokens(sizes, 2.0, cfg.window_tokens)
    local = cfg.local_decode and (kind == "boxes" or cfg.point_window_tokens is not None)
    if not local:
        windows[:] = grid
    elif kind == "points":
        windows[:] = min(int(cfg.point_window_tokens), grid)
    for wsize in np.unique(windows):
        group = prompts[windows == wsize]
        for i in range(0, len(group), cfg.batch_size):
            chunk = group[i : i + cfg.batch_size].astype(np.float32)
            if kind == "points":
                pts = (torch.from_numpy(chunk[:, None] * scale).to(dev), torch.ones(len(chunk), 1, device=dev).long())
                bt = None
            else:
                pts, bt = None, torch.from_numpy(chunk * np.tile(scale, 2)).to(dev)
            if local:
                logits, iou, origin = decode_local(model, predictor.embedding.features, bt, pts, int(wsize),
                                                   multimask)
                origin = origin.cpu().numpy()
            else:
                with torch.inference_mode():
                    logits, iou = model.decode(predictor.embedding.features, pts, bt, None, multimask)
                origin = np.zeros((len(chunk), 2))
            records += _records_from_logits(logits, iou, origin, geo, (win[0], win[1]), cfg)
    return records


def _searched_points(predictor: Predictor, points: np.ndarray, cfg: EverythingConfig, win) -> list[MaskRecord]:
    """Point prompts (tile pixels) on a box-only model: each point's best candidate of the click search."""
    # squares only, one decode, on windows 2x the box, ranked on every logit by the hand-set ranking (as
    # measured for the point grid; the click search's own defaults go coarse to fine on 1.5x windows)
    settings = SearchSettings(sides=tuple(cfg.point_search_sides), aspects=(1.0,), window_factor=2.0, full_window=40,
                              rank_stride=1, offset=0, ranker=HAND_RANKER, reach=0, tighten=0,
                              similar=())
    scale = predictor.coordinate_scale()
    frame = predictor.embedding.input_size
    if not len(points):
        return []
    logits, iou = [], []
    one = np.ones(1, dtype=np.int32)
    for i in range(0, len(points), cfg.batch_size):
        chunk = np.asarray(points[i : i + cfg.batch_size], dtype=np.float32)
        found = [c for c, _ in search_many(predictor.model, predictor.embedding.features, frame,
                                           [(xy[None] * scale, one) for xy in chunk], settings)]
        logits += sharpen(predictor.model, predictor.embedding.features, [(c, [0]) for c in found], settings)
        iou += [float(c.iou[0]) for c in found]
    stacked = torch.stack(logits)  # (P, 1, m, m) in the full low-res frame
    return _records_from_logits(stacked, torch.tensor(iou)[:, None], np.zeros((len(iou), 2)), _geometry(predictor),
                                (win[0], win[1]), cfg)


def _tile_prompts(
    image_shape, windows, mode: str, cfg: EverythingConfig, image: np.ndarray
) -> list[tuple[np.ndarray, str]]:
    """Per window: prompts in tile pixels and their kind ('boxes' or 'points')."""
    if mode == "blobs":
        found = blob_proposals(image, cfg.blob_min_distance)
        boxes = expand_boxes(found, cfg.blob_pads, image_shape)
        owner = assign_to_windows(boxes, windows)
        out = []
        for t, (y0, x0, y1, x1) in enumerate(windows):
            b = boxes[owner == t] - np.array([x0, y0, x0, y0])
            b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, x1 - x0 - 1)
            b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, y1 - y0 - 1)
            out.append((b, "boxes"))
        return out
    out = []
    for y0, x0, y1, x1 in windows:
        shape = (y1 - y0, x1 - x0)
        if mode == "grid":
            out.append((grid_boxes(shape, cfg.grid_box_sizes, cfg.grid_stride), "boxes"))
        else:
            out.append((point_grid(shape, cfg.points_per_side), "points"))
    return out


def generate_masks(
    predictor: Predictor,
    image: np.ndarray,
    cfg: EverythingConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[MaskRecord]:
    """All object masks of `image` (grey/RGB/RGBA) in everything mode; see the module docstring.

    `progress(done_tiles, total_tiles)` is called after each tile. Records are sorted by predicted IoU.
    """
    cfg = cfg or EverythingConfig()
    arr = np.asarray(image)
    as_rgb_float(arr)  # validation with a clear message before any work
    mode = resolve_proposal(predictor, cfg)
    shape = arr.shape[:2]
    if cfg.tile_size == 0:
        windows = [(0, 0, int(shape[0]), int(shape[1]))]
    else:
        windows = grid_windows(shape, cfg.tile_size, cfg.tile_overlap)
    prompts = _tile_prompts(shape, windows, mode, cfg, arr)
    records: list[MaskRecord] = []
    for t, (win, (tile_prompts, kind)) in enumerate(zip(windows, prompts, strict=True)):
        if len(tile_prompts):
            y0, x0, y1, x1 = win
            predictor.set_image(arr[y0:y1, x0:x1])
            found = _decode_tile(predictor, tile_prompts, kind, cfg, win)
            records += [r for r in found if not _touches_inner_border(r.box, win, shape)]
        if progress is not None:
            progress(t + 1, len(windows))
    if not records:
        return []
    boxes = np.array([r.box for r in records])
    scores = np.array([r.predicted_iou for r in records])
    keep = nms(boxes, scores, cfg.box_nms_thresh)
    return [records[i] for i in keep]


def instance_recall(records: list[MaskRecord], label: np.ndarray, iou_threshold: float = 0.5) -> float:
    """Fraction of labelled instances matched at IoU > `iou_threshold` by some record (1.0 when none)."""
    lab = np.asarray(label)
    ids, sizes = np.unique(lab[lab > 0], return_counts=True)
    if len(ids) == 0:
        return 1.0
    gt_area = dict(zip(ids.tolist(), sizes.tolist(), strict=True))
    best = dict.fromkeys(gt_area, 0.0)
    for r in records:
        x0, y0, x1, y1 = r.box
        under = lab[y0 : y1 + 1, x0 : x1 + 1][r.crop]
        got, inter = np.unique(under[under > 0], return_counts=True)
        for g, n in zip(got.tolist(), inter.tolist(), strict=True):
            best[g] = max(best[g], n / (r.area + gt_area[g] - n))
    return float(np.mean([v > iou_threshold for v in best.values()]))
