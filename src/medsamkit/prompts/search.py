"""Click search: what a click means to a model that understands boxes.

A box-only model (the bundled LiteMedSAM) answers a point with an empty mask, but it segments whatever
object a box frames. So a click is answered by asking the model many boxes around it (square boxes of several
sides, then other aspect ratios at the best sides, each containing every positive click) in two batched decoder
calls on the cached embedding, and keeping the candidate masks that contain every positive click and no negative
one. They are ranked by the model's predicted IoU, the stability of their logits, how deep inside the mask the
clicks lie, and how persistent the mask is across the other boxes (an object appears under many boxes, a blob of
several objects or a part of one under few); given the view's image, also by the image edges under their outline
(``prompts.edges``). Settings were chosen on GlaS train and MoNuSeg train
(docs/protocols.md "Clicks on box-only models"). ``SearchSettings.fitted()`` is a ranking fitted to those
splits with squares off the clicks too: measured, not the default (it lost on CT).

Everything here works in the model's low-res frame (m x m logits; the image occupies its top-left part):
boxes are in model-input pixels, clicks are given in the same frame. With ``rank_stride`` s > 1 candidates
are decoded and ranked on every s-th logit of that frame (the decoder forms only those) and ``sharpen``
decodes the chosen boxes' full logits.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from medsamkit.models.local_decode import decode_windows, window_tokens
from medsamkit.models.sam import SamFamilyModel, last_derived
from medsamkit.prompts.edges import boundary_edges, edge_map
from medsamkit.prompts.ranking import (
    FEATURES,
    Candidates,
    click_distance,
    honours,
    mask_extent,
    own_features,
    ranking_features,
    score_features,
)
from medsamkit.prompts.search_settings import SearchSettings

NEG_LOGIT = -20.0  # logits outside a decoding window: certainly background


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
    (``models.fast_decode.sample_logits``), and predicted IoU (K,) of boxes (model px).

    Boxes are decoded on a window of the embedding around them (``models.local_decode``), at most
    ``settings.max_window`` tokens when set; windows reaching ``settings.full_window`` decode on the whole embedding,
    where the work shared by all prompts makes a large window no cheaper. Every window size goes in one decoder
    pass (``local_decode.decode_windows``)."""
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
    if settings.max_window > 0:
        windows = np.minimum(windows, max(settings.max_window, settings.min_window))
    windows[windows >= min(settings.full_window, grid)] = grid
    for idx, low, q, origin in decode_windows(model, features, bt, windows, sample):
        span = low.shape[-1]
        for j, i in enumerate(idx.tolist()):
            ox, oy = origin[j].tolist()
            out[i, oy : oy + span, ox : ox + span] = low[j, 0].float()
        iou[torch.from_numpy(idx).to(features.device)] = q[:, 0].float()
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


def rank(cands: Candidates, clicks: np.ndarray, labels: np.ndarray, settings: SearchSettings,
         per_px: float = 1.0, own: np.ndarray | None = None, outline_edges: np.ndarray | None = None) -> np.ndarray:
    """Scores (K,) of the candidates for clicks (N, 2; sampled low-res px) with labels (N,): candidates that
    break a click (a negative inside, a positive farther than ``settings.reach``) rank below every one that
    honours all, fewer broken clicks first. ``own``: their ``ranking.own_features`` when already known;
    ``outline_edges``: the mean image edge under each one's outline (``_outline_edges``), which adds
    ``settings.edge_weight`` x it (None: no image, no such term)."""
    labels = np.asarray(labels)
    features = ranking_features(cands, clicks, labels, per_px, settings.reach, settings.stability_offset, own)
    clicks = np.asarray(clicks)
    positives, negatives = clicks[labels == 1], clicks[labels != 1]
    reach = settings.reach / cands.stride
    # a positive click can be out of reach only where the farthest one is (clicks_inside 0); a lone one is exactly
    # there, else each is measured
    far = features[:, FEATURES.index("clicks_inside")] == 0
    if len(positives) == 1:
        broken = far.astype(np.float64)
    else:
        broken = np.array([sum(click_distance(m, p[None]) > reach for p in positives) if out else 0
                           for m, out in zip(cands.masks, far)], dtype=np.float64)
    broken += (~honours(cands.masks, negatives, np.zeros(len(negatives)))).sum(-1)  # a negative click inside a mask
    features[broken > 0, FEATURES.index("click_depth")] = 0.0  # a candidate breaking a click has no depth
    scores = score_features(features, settings.ranker) - 10.0 * broken
    if outline_edges is not None:
        scores = scores + settings.edge_weight * outline_edges
    return scores


def search(model: SamFamilyModel, features: torch.Tensor, frame: tuple[int, int], clicks: np.ndarray,
           labels: np.ndarray, settings: SearchSettings, image: np.ndarray | None = None
           ) -> tuple[Candidates, np.ndarray]:
    """Candidates for clicks (N, 2; model-input px) with labels (N,), and their scores (K,), best first.

    ``frame`` is the (h, w) of the image inside the model input; ``image``: the view embedded (its edges rank the
    candidates, ``prompts.edges``; None: not). Needs at least one positive click."""
    return search_many(model, features, frame, [(clicks, labels)], settings, image)[0]


def search_many(model: SamFamilyModel, features: torch.Tensor, frame: tuple[int, int],
                prompts: list[tuple[np.ndarray, np.ndarray]], settings: SearchSettings,
                image: np.ndarray | None = None) -> list[tuple[Candidates, np.ndarray]]:
    """``search`` for several prompts (clicks, labels) at once: all their boxes in one batched decode (two
    when ``settings.refine_sides``: squares, then the other aspects at the best squares' sides)."""
    per_px = model.mask_input_size[0] / model.preprocessing.input_size
    edges = _edges(model, features, frame, image, settings)
    sampled = [(clicks * per_px / settings.rank_stride, labels) for clicks, labels in prompts]
    positives = [clicks[labels == 1] for clicks, labels in prompts]
    others = tuple(a for a in settings.aspects if a != 1.0)
    if not settings.refine_sides or not others:
        fixed = [np.concatenate([candidate_boxes(pos, frame, settings), _offset_squares(pos, frame, settings)[0]])
                 for pos in positives]
        grown = [similar_boxes(model, features, pos, frame, settings) for pos in positives]
        found = _decode(model, features, frame, [np.concatenate(b) for b in zip(fixed, grown)], settings,
                        [np.arange(len(f) + len(g)) < len(f) for f, g in zip(fixed, grown)])
        return _tightened(model, features, frame,
                          [_ranked(c, clicks, labels, settings, per_px, outline_edges=_outline_edges(c, edges))
                           for c, (clicks, labels) in zip(found, sampled)], sampled, settings)
    squares, square_sides, fixed = zip(*(_squares(pos, frame, settings,
                                                  similar_boxes(model, features, pos, frame, settings))
                                         for pos in positives))
    first = _decode(model, features, frame, list(squares), settings, list(fixed))
    more, owns, outlines = [], [], []
    for pos, cands, sides, (clicks, labels) in zip(positives, first, square_sides, sampled):
        owns.append(own_features(cands, clicks, labels, per_px, settings.stability_offset))  # kept for the 2nd
        outlines.append(_outline_edges(cands, edges))  # likewise
        scores = rank(cands, clicks, labels, settings, per_px, owns[-1], outlines[-1])
        best = np.argsort(-scores, kind="stable")[: settings.refine_sides]
        more.append(candidate_boxes(pos, frame, settings, sides=tuple(sides[best]), aspects=others))
    second = _decode(model, features, frame, more, settings)
    ranked = []
    for a, b, own, outline, (clicks, labels) in zip(first, second, owns, outlines, sampled):
        own = np.concatenate([own, own_features(b, clicks, labels, per_px, settings.stability_offset)])
        outline = None if outline is None else np.concatenate([outline, _outline_edges(b, edges)])
        ranked.append(_ranked(_joined(a, b), clicks, labels, settings, per_px, own, outline))
    return _tightened(model, features, frame, ranked, sampled, settings)


def _tightened(model: SamFamilyModel, features: torch.Tensor, frame: tuple[int, int],
               ranked: list[tuple[Candidates, np.ndarray]], sampled: list[tuple[np.ndarray, np.ndarray]],
               settings: SearchSettings) -> list[tuple[Candidates, np.ndarray]]:
    """Each prompt's ranked candidates with the answer to the best one's tight box grown by ``settings.tighten``
    px put first (scored above the rest) where it honours the prompt's clicks (sampled low-res px); one batched
    decode for all prompts."""
    if settings.tighten <= 0 or not ranked:
        return ranked
    per_px = model.mask_input_size[0] / model.preprocessing.input_size
    h, w = frame
    grow = np.float32(settings.tighten) * np.array([-1, -1, 1, 1], dtype=np.float32)
    boxes = []
    for cands, _ in ranked:
        x0, y0, x1, y1 = mask_extent(cands.masks[0]) if len(cands) else [0.0] * 4
        box = np.array([x0, y0, x1, y1], dtype=np.float32) * cands.stride / per_px + grow
        boxes.append(np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])[None].astype(np.float32))
    found = _decode(model, features, frame, boxes, settings)
    out = []
    for (cands, scores), fit, (clicks, labels) in zip(ranked, found, sampled):
        mask = fit.masks[0]
        if len(cands) and cands.masks[0].any() and mask.any() and honours(mask, clicks, labels).all():
            out.append((_joined(fit, cands), np.concatenate([[scores[0] + 1.0], scores])))
        else:
            out.append((cands, scores))
    return out


def _joined(a: Candidates, b: Candidates) -> Candidates:
    return Candidates(np.concatenate([a.boxes, b.boxes]), torch.cat([a.logits, b.logits]),
                      np.concatenate([a.iou, b.iou]), np.concatenate([a.masks, b.masks]), a.stride,
                      np.concatenate([a.voting(), b.voting()]))


def _squares(positives: np.ndarray, frame: tuple[int, int], settings: SearchSettings, grown: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The square boxes of every side (K, 4), centred on the clicks and off them (``_offset_squares``), with the
    ``grown`` boxes (``similar_boxes``); the side each was made with (K,; a grown box's longer side) and whether it
    is a square (K,; False for a grown box); duplicates (boxes clipped to the same one at the image border)
    removed."""
    off, off_sides = _offset_squares(positives, frame, settings)
    boxes = np.concatenate([candidate_boxes(positives, frame, settings, sides=(s,), aspects=(1.0,))
                            for s in settings.sides] + [off, grown])
    grown_sides = np.maximum(grown[:, 2] - grown[:, 0], grown[:, 3] - grown[:, 1])
    sides = np.concatenate([np.asarray(settings.sides, dtype=np.float32), off_sides, grown_sides])
    square = np.arange(len(boxes)) < len(boxes) - len(grown)
    _, first = np.unique(boxes, axis=0, return_index=True)
    keep = np.sort(first)
    return boxes[keep], sides[keep], square[keep]


def similar_boxes(model: SamFamilyModel, features: torch.Tensor, positives: np.ndarray, frame: tuple[int, int],
                  settings: SearchSettings) -> np.ndarray:
    """Boxes (K, 4; model-input px) grown from the image content around the positive clicks (N, 2; model-input px):
    per threshold of ``settings.similar``, the connected region of embedding tokens whose features have a cosine
    similarity above it to the clicks' mean feature, holding every click's token, boxed and grown by the larger of
    ``similar_margin`` px and ``similar_grow`` x its side; clipped to the image part ``frame`` (h, w). None where a
    click's token is below the threshold or the box would be larger than the largest square side."""
    pos = np.asarray(positives, dtype=np.float32).reshape(-1, 2)
    if not settings.similar or not len(pos):
        return np.zeros((0, 4), dtype=np.float32)
    stride = model.preprocessing.input_size / features.shape[-1]
    h, w = frame
    rows, cols = int(np.ceil(h / stride)), int(np.ceil(w / stride))
    tokens = token_features(features)[:, :rows, :cols]  # (C, rows, cols), unit length
    ty = np.clip((pos[:, 1] / stride).astype(int), 0, rows - 1)
    tx = np.clip((pos[:, 0] / stride).astype(int), 0, cols - 1)
    ref = tokens[:, torch.from_numpy(ty), torch.from_numpy(tx)].float().mean(1)
    similarity = torch.einsum("c,chw->hw", ref / ref.norm().clamp(min=1e-6), tokens.float()).cpu().numpy()
    boxes = []
    for threshold in settings.similar:
        regions, _ = ndimage.label(similarity > threshold)
        held = np.unique(regions[ty, tx])
        if held[0] == 0:  # a click's own token is below the threshold
            continue
        ys, xs = np.nonzero(np.isin(regions, held))
        x0, y0, x1, y1 = xs.min() * stride, ys.min() * stride, (xs.max() + 1) * stride, (ys.max() + 1) * stride
        grow = max(settings.similar_margin, settings.similar_grow * max(x1 - x0, y1 - y0))
        if max(x1 - x0, y1 - y0) + 2 * grow > max(settings.sides):  # larger than every square: the background
            continue
        boxes.append(np.clip([x0 - grow, y0 - grow, x1 + grow, y1 + grow], 0, [w - 1, h - 1, w - 1, h - 1]))
    return np.round(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), 1)


def token_features(features: torch.Tensor) -> torch.Tensor:
    """An embedding's (1, C, g, g) tokens scaled to unit length, (C, g, g); the last embedding's are kept (a
    click session searches many times on one)."""
    return last_derived(features, "unit_tokens", lambda f: f[0] / f[0].norm(dim=0, keepdim=True).clamp(min=1e-6))


OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _offset_squares(positives: np.ndarray, frame: tuple[int, int], settings: SearchSettings
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Squares (K, 4) of the sides up to ``settings.offset_max`` with the clicks off their centre, moved by
    ``settings.offset`` x the side along the diagonals (and the axes: ``offset_directions``), and their sides
    (K,); none when ``settings.offset`` is 0."""
    pos = np.asarray(positives, dtype=np.float32).reshape(-1, 2)
    directions = OFFSETS if settings.offset_directions == 8 else tuple(d for d in OFFSETS if all(d))
    sides = [s for s in settings.sides if settings.offset > 0 and s <= settings.offset_max]
    boxes = [candidate_boxes(pos + np.float32(settings.offset * s) * np.array(d, dtype=np.float32), frame,
                             settings, sides=(s,), aspects=(1.0,))
             for s in sides for d in directions]
    return (np.concatenate(boxes) if boxes else np.zeros((0, 4), dtype=np.float32),
            np.repeat(np.asarray(sides, dtype=np.float32), len(directions)))


def _decode(model: SamFamilyModel, features: torch.Tensor, frame: tuple[int, int], boxes: list[np.ndarray],
            settings: SearchSettings, voters: list[np.ndarray] | None = None) -> list[Candidates]:
    """The candidates of several prompts' boxes (model-input px), decoded in one batched call; ``voters``: per
    prompt, which of its boxes vote in the persistence (the boxes grown from the image content do not:
    ``ranking.Candidates``; default all)."""
    s = settings.rank_stride
    logits, iou = decode_boxes(model, features, np.concatenate(boxes), settings, s)
    m = model.mask_input_size[0]
    per_px = m / model.preprocessing.input_size
    valid = np.zeros((m // s, m // s), dtype=bool)  # samples at s*i + s//2 inside the image part
    rows, cols = (int(np.ceil((round(side * per_px) - s // 2) / s)) for side in frame)
    valid[:rows, :cols] = True
    masks = (logits > 0).cpu().numpy() & valid
    out, start = [], 0
    for i, b in enumerate(boxes):
        part = slice(start, start + len(b))
        start += len(b)
        out.append(Candidates(b, logits[part], iou[part], masks[part], s, None if voters is None else voters[i]))
    return out


def _ranked(cands: Candidates, clicks: np.ndarray, labels: np.ndarray, settings: SearchSettings, per_px: float,
            own: np.ndarray | None = None, outline_edges: np.ndarray | None = None
            ) -> tuple[Candidates, np.ndarray]:
    """The candidates best first and their scores (clicks in low-res px; ``own`` and ``outline_edges`` as
    ``rank``'s)."""
    scores = rank(cands, clicks, labels, settings, per_px, own, outline_edges)
    order = np.argsort(-scores, kind="stable")
    return cands.take(order), scores[order]


def _edges(model: SamFamilyModel, features: torch.Tensor, frame: tuple[int, int], image: np.ndarray | None,
           settings: SearchSettings) -> np.ndarray | None:
    """The view's ``edges.edge_map`` in the search's (sampled) low-res frame; None without an image or weight. Made
    once per embedding (``last_derived``: the image a predictor holds is the one its embedding embeds), as a click
    session searches many times on one."""
    if image is None or not settings.edge_weight:
        return None
    m = model.mask_input_size[0]
    per_px = m / model.preprocessing.input_size
    edges = last_derived(features, "edge_map",
                         lambda _: edge_map(image, (round(frame[0] * per_px), round(frame[1] * per_px)), m))
    s = settings.rank_stride
    return edges if s == 1 else edges[s // 2 :: s, s // 2 :: s]


def _outline_edges(cands: Candidates, edges: np.ndarray | None) -> np.ndarray | None:
    """The mean of ``edges`` (``_edges``) under each candidate's outline (K,); None without the map."""
    return None if edges is None else boundary_edges(cands.masks, edges)


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
