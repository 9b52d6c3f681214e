"""Click search: what a click means to a model that understands boxes.

A box-only model (the bundled LiteMedSAM) answers a point with an empty mask, but it segments whatever
object a box frames. So a click is answered by asking the model many boxes around it (square boxes of several
sides, then other aspect ratios at the best sides, each containing every positive click) in two batched
decoder calls on the cached embedding,
and keeping the candidate masks that contain every positive click and no negative one. They are ranked by
the model's predicted IoU, the stability of their logits, how deep inside the mask the clicks lie, and how
persistent the mask is across the other boxes (an object appears under many boxes, a blob of several
objects or a part of one under few). Settings were chosen on GlaS train and MoNuSeg train
(docs/protocols.md "Clicks on box-only models").

Everything here works in the model's low-res frame (m x m logits; the image occupies its top-left part):
boxes are in model-input pixels, clicks are given in the same frame. With ``rank_stride`` s > 1 candidates
are decoded and ranked on every s-th logit of that frame (the decoder forms only those) and ``sharpen``
decodes the chosen boxes' full logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from medsamkit.core.errors import InputError
from medsamkit.models.local_decode import decode_local, window_tokens
from medsamkit.models.sam import SamFamilyModel

NEG_LOGIT = -20.0  # logits outside a decoding window: certainly background


@dataclass(frozen=True)
class SearchSettings:
    """The candidate set and the ranking weights of the click search."""

    sides: tuple[float, ...] = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192)  # box sides, model-input pixels
    aspects: tuple[float, ...] = (1.0, 2.0, 0.5)  # width / height
    depth_weight: float = 0.5
    persistence_weight: float = 2.0
    stability_weight: float = 1.0
    stability_offset: float = 1.0  # as SAM's stability score
    window_factor: float = 1.5  # a box is decoded on a window this many times its side (in tokens, x8)
    min_window: int = 16  # tokens
    full_window: int = 64  # windows this large or larger decode on the whole embedding (shared work)
    distinct_iou: float = 0.9  # multimask alternatives overlap the better ones by less than this
    # coarse to fine: square boxes of every side first, then the other aspects only at the sides of the
    # best ``refine_sides`` squares (0: every side and aspect in one decode). With the windows above: 1.7-1.9x
    # fewer CPU seconds per click than (0, 2.0, 40), centre-click IoU GlaS train 0.781 vs 0.795, MoNuSeg train
    # 0.582 vs 0.579, random1 GlaS train 0.447 vs 0.445
    refine_sides: int = 2
    # clicks without a box: one search with all of them ("always"), only while all are positive
    # ("positive"), or only the first ("first": every later click corrects the answer so far; best on GlaS
    # train iter5: 0.880 after 5 clicks vs 0.873 "positive")
    whole_search: str = "first"
    # candidates can be decoded and ranked on every rank_stride-th low-res logit per axis (1, 2 or 4; the
    # decoder's upscaling then forms 1/s^2 of its outputs); the chosen ones are decoded in full (sharpen).
    # 2 vs 1 looked even on the tuning splits (mean +0.005 Dice) but lost on every held-out set (centre Dice
    # GlaS -0.018, MoNuSeg -0.007, lung -0.061) for 1.0-1.5x centre prompts/s: not the default
    rank_stride: int = 1

    def __post_init__(self) -> None:
        if self.rank_stride not in (1, 2, 4):
            raise InputError(f"rank_stride must be 1, 2 or 4 (the decoder's upscaling taps), not {self.rank_stride}")


@dataclass
class Candidates:
    """K candidate masks of one prompt in the low-res frame, sampled every ``stride``-th pixel per axis."""

    boxes: np.ndarray  # (K, 4) model-input pixels
    logits: torch.Tensor  # (K, m/s, m/s)
    iou: np.ndarray  # (K,) predicted IoU
    masks: np.ndarray  # (K, m/s, m/s) bool, zero outside the image part of the frame
    stride: int = 1

    def __len__(self) -> int:
        return len(self.boxes)


def candidate_boxes(positives: np.ndarray, frame: tuple[float, float], settings: SearchSettings,
                    sides: tuple[float, ...] | None = None, aspects: tuple[float, ...] | None = None) -> np.ndarray:
    """Boxes (K, 4) around the positive clicks (N, 2) (model-input px), each containing all of them, clipped
    to the image part of the input ``frame`` (h, w); duplicates removed. ``sides`` and ``aspects`` default to
    the settings'."""
    pos = np.asarray(positives, dtype=np.float32).reshape(-1, 2)
    lo, hi = pos.min(0), pos.max(0)
    centre, extent = (lo + hi) / 2, hi - lo
    h, w = frame
    boxes = []
    for side in settings.sides if sides is None else sides:
        for aspect in settings.aspects if aspects is None else aspects:
            bw = max(side * np.sqrt(aspect), extent[0] + 4)
            bh = max(side / np.sqrt(aspect), extent[1] + 4)
            box = [centre[0] - bw / 2, centre[1] - bh / 2, centre[0] + bw / 2, centre[1] + bh / 2]
            boxes.append(np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1]))
    boxes = np.round(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), 1)
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


@torch.inference_mode()
def decode_boxes(model: SamFamilyModel, features: torch.Tensor, boxes: np.ndarray,
                 settings: SearchSettings, sample: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    """Single-mask logits (K, m/s, m/s) in the full low-res frame, every ``sample``-th pixel per axis
    (``models.sam.sample_logits``), and predicted IoU (K,) of boxes (model px).

    Small boxes are decoded on a window of the embedding around them (``models.local_decode``), large ones
    on the whole embedding, where the work shared by all prompts makes a large window no cheaper."""
    grid = features.shape[-1]
    m = model.mask_input_size[0] // sample
    stride = model.preprocessing.input_size / grid
    bt = torch.as_tensor(np.asarray(boxes, dtype=np.float32), device=features.device)
    out = torch.full((len(bt), m, m), NEG_LOGIT, device=features.device)
    iou = torch.zeros(len(bt), device=features.device)
    if not len(bt):
        return out, iou.cpu().numpy()
    side = ((bt[:, 2:] - bt[:, :2]).max(1).values + 1) / stride
    windows = window_tokens(side.cpu().numpy(), settings.window_factor, settings.min_window)
    windows[windows >= min(settings.full_window, grid)] = grid
    for size in np.unique(windows).tolist():
        idx = torch.from_numpy(np.nonzero(windows == size)[0]).to(features.device)
        if size >= grid:
            low, q = model.decode(features, None, bt[idx], None, False, sample)
            out[idx], iou[idx] = low[:, 0].float(), q[:, 0].float()
            continue
        low, q, origin = decode_local(model, features, bt[idx], None, int(size), False, sample)
        span = low.shape[-1]
        for j, i in enumerate(idx.tolist()):
            ox, oy = origin[j].tolist()
            out[i, oy : oy + span, ox : ox + span] = low[j, 0].float()
            iou[i] = q[j, 0].float()
    return out, iou.cpu().numpy()


def sharpen(model: SamFamilyModel, features: torch.Tensor, chosen: list[tuple[Candidates, list[int]]],
            settings: SearchSettings) -> list[torch.Tensor]:
    """Per (candidates, indices): the full low-res logits (k, m, m) of those candidates, as the search
    decoded them (sampled candidates are decoded again in full, all in one batched call)."""
    if all(c.stride == 1 for c, _ in chosen):
        return [c.logits[list(idx)] for c, idx in chosen]
    boxes = np.concatenate([c.boxes[list(idx)] for c, idx in chosen]).reshape(-1, 4)
    logits = decode_boxes(model, features, boxes, settings)[0]
    return list(torch.split(logits, [len(idx) for _, idx in chosen]))


def click_depth(mask: np.ndarray, clicks: np.ndarray) -> float:
    """Mean over ``clicks`` (N, 2; x, y low-res px) of the distance to the background of the mask component
    holding the click, over that component's largest distance (1: the click is at its centre; 0: outside)."""
    if not len(clicks):
        return 0.0
    labels, _ = ndimage.label(mask)
    depths = []
    for x, y in np.asarray(clicks).astype(int):
        comp = labels[y, x]
        if comp == 0:
            depths.append(0.0)
            continue
        rows, cols = np.nonzero(labels == comp)
        r0, c0 = rows.min(), cols.min()
        crop = np.pad(labels[r0 : rows.max() + 1, c0 : cols.max() + 1] == comp, 1)
        dist = ndimage.distance_transform_edt(crop)
        depths.append(float(dist[y - r0 + 1, x - c0 + 1] / dist.max()))
    return float(np.mean(depths))


def persistence(masks: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per mask, the mean over the other boxes' masks of their IoU with it: how many boxes agree on it."""
    k = len(masks)
    if k < 2:
        return np.zeros(k)
    any_px = masks.any(0)
    rows, cols = np.nonzero(any_px.any(1))[0], np.nonzero(any_px.any(0))[0]
    if not len(rows):
        return np.zeros(k)
    flat = masks[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].reshape(k, -1).astype(np.float32)
    area = flat.sum(1)
    inter = flat @ flat.T
    union = area[:, None] + area[None] - inter
    pair = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    other = groups[:, None] != groups[None]
    return np.where(other, pair, 0).sum(1) / np.maximum(other.sum(1), 1)


def stability(logits: torch.Tensor, offset: float) -> np.ndarray:
    """SAM's stability score per mask: |logits > offset| / |logits > -offset| (0 when nothing is above)."""
    high = (logits > offset).flatten(1).sum(1).double()
    low = (logits > -offset).flatten(1).sum(1).double()
    return torch.where(low > 0, high / low.clamp(min=1), torch.zeros_like(low)).cpu().numpy()


def honours(mask: np.ndarray, clicks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per click (x, y in the mask's pixels), whether the mask agrees with it (positive inside, negative out)."""
    if not len(clicks):
        return np.zeros(0, dtype=bool)
    xy = np.asarray(clicks).astype(int)
    xy[:, 0] = np.clip(xy[:, 0], 0, mask.shape[1] - 1)
    xy[:, 1] = np.clip(xy[:, 1], 0, mask.shape[0] - 1)
    inside = mask[xy[:, 1], xy[:, 0]]
    return inside == (np.asarray(labels) == 1)


def rank(cands: Candidates, clicks: np.ndarray, labels: np.ndarray, settings: SearchSettings,
         groups: np.ndarray | None = None) -> np.ndarray:
    """Scores (K,) of the candidates for clicks (N, 2; low-res px) with labels (N,): candidates that break
    a click rank below every one that honours all, fewer broken clicks first."""
    k = len(cands)
    groups = np.arange(k) if groups is None else groups
    positives = clicks[labels == 1]
    broken = np.array([(~honours(m, clicks, labels)).sum() for m in cands.masks])
    depth = np.array([click_depth(m, positives) if b == 0 else 0.0 for m, b in zip(cands.masks, broken)])
    score = (cands.iou + settings.depth_weight * depth
             + settings.persistence_weight * persistence(cands.masks, groups)
             + settings.stability_weight * stability(cands.logits, settings.stability_offset))
    return score - 10.0 * broken


def search(model: SamFamilyModel, features: torch.Tensor, frame: tuple[int, int], clicks: np.ndarray,
           labels: np.ndarray, settings: SearchSettings) -> tuple[Candidates, np.ndarray]:
    """Candidates for clicks (N, 2; model-input px) with labels (N,), and their scores (K,), best first.

    ``frame`` is the (h, w) of the image inside the model input. Needs at least one positive click."""
    return search_many(model, features, frame, [(clicks, labels)], settings)[0]


def search_many(model: SamFamilyModel, features: torch.Tensor, frame: tuple[int, int],
                prompts: list[tuple[np.ndarray, np.ndarray]], settings: SearchSettings
                ) -> list[tuple[Candidates, np.ndarray]]:
    """``search`` for several prompts (clicks, labels) at once: all their boxes in one batched decode (two
    when ``settings.refine_sides``: squares, then the other aspects at the best squares' sides)."""
    per_px = model.mask_input_size[0] / model.preprocessing.input_size / settings.rank_stride
    positives = [clicks[labels == 1] for clicks, labels in prompts]
    others = tuple(a for a in settings.aspects if a != 1.0)
    if not settings.refine_sides or not others:
        boxes = [candidate_boxes(pos, frame, settings) for pos in positives]
        found = _decode(model, features, frame, boxes, settings)
        return [_ranked(c, clicks * per_px, labels, settings) for c, (clicks, labels) in zip(found, prompts)]
    squares, square_sides = zip(*(_squares(pos, frame, settings) for pos in positives))
    first = _decode(model, features, frame, list(squares), settings)
    more = []
    for pos, cands, sides, (clicks, labels) in zip(positives, first, square_sides, prompts):
        scores = rank(cands, clicks * per_px, labels, settings)
        best = np.argsort(-scores, kind="stable")[: settings.refine_sides]
        more.append(candidate_boxes(pos, frame, settings, sides=tuple(sides[best]), aspects=others))
    second = _decode(model, features, frame, more, settings)
    out = []
    for a, b, (clicks, labels) in zip(first, second, prompts):
        both = Candidates(np.concatenate([a.boxes, b.boxes]), torch.cat([a.logits, b.logits]),
                          np.concatenate([a.iou, b.iou]), np.concatenate([a.masks, b.masks]), a.stride)
        out.append(_ranked(both, clicks * per_px, labels, settings))
    return out


def _squares(positives: np.ndarray, frame: tuple[int, int], settings: SearchSettings
             ) -> tuple[np.ndarray, np.ndarray]:
    """The square boxes of every side (K, 4) and the side each was made with (K,), duplicates (boxes clipped
    to the same one at the image border) removed."""
    boxes = np.concatenate([candidate_boxes(positives, frame, settings, sides=(s,), aspects=(1.0,))
                            for s in settings.sides])
    _, first = np.unique(boxes, axis=0, return_index=True)
    keep = np.sort(first)
    return boxes[keep], np.asarray(settings.sides, dtype=np.float32)[keep]


def _decode(model: SamFamilyModel, features: torch.Tensor, frame: tuple[int, int], boxes: list[np.ndarray],
            settings: SearchSettings) -> list[Candidates]:
    """The candidates of several prompts' boxes (model-input px), decoded in one batched call."""
    s = settings.rank_stride
    logits, iou = decode_boxes(model, features, np.concatenate(boxes), settings, s)
    m = model.mask_input_size[0]
    per_px = m / model.preprocessing.input_size
    valid = np.zeros((m // s, m // s), dtype=bool)  # samples at s*i + s//2 inside the image part
    rows, cols = (int(np.ceil((round(side * per_px) - s // 2) / s)) for side in frame)
    valid[:rows, :cols] = True
    masks = (logits > 0).cpu().numpy() & valid
    out, start = [], 0
    for b in boxes:
        part = slice(start, start + len(b))
        start += len(b)
        out.append(Candidates(b, logits[part], iou[part], masks[part], s))
    return out


def _ranked(cands: Candidates, clicks: np.ndarray, labels: np.ndarray, settings: SearchSettings
            ) -> tuple[Candidates, np.ndarray]:
    """The candidates best first and their scores (clicks in low-res px)."""
    scores = rank(cands, clicks, labels, settings)
    order = np.argsort(-scores, kind="stable")
    return (Candidates(cands.boxes[order], cands.logits[order], cands.iou[order], cands.masks[order], cands.stride),
            scores[order])


def distinct(masks: np.ndarray, count: int, max_iou: float) -> list[int]:
    """Indices of up to ``count`` masks in order, each overlapping every earlier pick by IoU < max_iou."""
    picked: list[int] = []
    for i, m in enumerate(masks):
        area = m.sum()
        ok = True
        for j in picked:
            inter = (m & masks[j]).sum()
            if inter / max(area + masks[j].sum() - inter, 1) >= max_iou:
                ok = False
                break
        if ok:
            picked.append(i)
        if len(picked) == count:
            break
    return picked
