"""Click search: what a click means to a model that understands boxes.

A box-only model (the bundled LiteMedSAM) answers a point with an empty mask, but it segments whatever
object a box frames. So a click is answered by asking the model many boxes around it (square boxes of several
sides, then other aspect ratios at the best sides, each containing every positive click) in two batched decoder
calls on the cached embedding, and keeping the candidate masks that contain every positive click and no negative
one. They are ranked by the model's predicted IoU, the stability of their logits, how deep inside the mask the
clicks lie, and how persistent the mask is across the other boxes (an object appears under many boxes, a blob of
several objects or a part of one under few). Settings were chosen on GlaS train and MoNuSeg train
(docs/protocols.md "Clicks on box-only models"). ``SearchSettings.fitted()`` is a ranking fitted to those
splits with squares off the clicks too: measured, not the default (it lost on CT).

Everything here works in the model's low-res frame (m x m logits; the image occupies its top-left part):
boxes are in model-input pixels, clicks are given in the same frame. With ``rank_stride`` s > 1 candidates
are decoded and ranked on every s-th logit of that frame (the decoder forms only those) and ``sharpen``
decodes the chosen boxes' full logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medsamkit.core.errors import InputError
from medsamkit.models.checkpoints import sha256_of
from medsamkit.models.local_decode import decode_local, window_tokens
from medsamkit.models.sam import SamFamilyModel
from medsamkit.prompts.ranking import (
    FEATURES,
    FITTED_RANKER,
    HAND_RANKER,
    Candidates,
    click_distance,
    honours,
    mask_extent,
    ranking_features,
    score_features,
)

RANKING_FORMAT = "medsamkit click ranking v1"  # ``medsamkit fit-clicks``'s ranking.json
RANKING_FILE = "ranking.json"
NEG_LOGIT = -20.0  # logits outside a decoding window: certainly background


@dataclass(frozen=True)
class SearchSettings:
    """The candidate set and the ranking weights of the click search."""

    sides: tuple[float, ...] = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192)  # box sides, model-input pixels
    aspects: tuple[float, ...] = (1.0, 2.0, 0.5)  # width / height
    # the ranking: score = [f, f^2, 1] @ ranker over the candidate features f (``ranking_features``); the
    # default is the hand-set one (HAND_RANKER), FITTED_RANKER the one benchmarks/fit_click_ranker.py fitted
    ranker: tuple[float, ...] = HAND_RANKER
    reach: float = 0.0  # a positive click this many low-res px or less from a mask counts as inside it
    stability_offset: float = 1.0  # as SAM's stability score
    window_factor: float = 1.5  # a box is decoded on a window this many times its side (in tokens, x8)
    min_window: int = 16  # tokens
    # and on at most this many (0: no cap). 48 kept the tuning splits' Dice but lost a little held out (lung iter5
    # 0.823 -> 0.810) for a click 170 -> 157 ms: not the default (docs/protocols.md "The largest window")
    max_window: int = 0
    full_window: int = 64  # windows this large or larger decode on the whole embedding (shared work)
    distinct_iou: float = 0.9  # multimask alternatives overlap the better ones by less than this
    # coarse to fine: square boxes of every side first, then the other aspects only at the sides of the
    # best ``refine_sides`` squares (0: every side and aspect in one decode). With the windows above: 1.7-1.9x
    # fewer CPU seconds per click than (0, 2.0, 40), centre-click IoU GlaS train 0.781 vs 0.795, MoNuSeg train
    # 0.582 vs 0.579, random1 GlaS train 0.447 vs 0.445
    refine_sides: int = 2
    # clicks without a box: one search with all of them ("always"), only while all are positive ("positive"), or
    # only the first ("first": every later click corrects the answer so far; best on GlaS train iter5: 0.880 after 5
    # clicks vs 0.873 "positive")
    whole_search: str = "first"
    # candidates can be decoded and ranked on every rank_stride-th low-res logit per axis (1, 2 or 4; the
    # decoder's upscaling then forms 1/s^2 of its outputs); the chosen ones are decoded in full (sharpen).
    # 2 vs 1 looked even on the tuning splits (mean +0.005 Dice) but lost on every held-out set (centre Dice
    # GlaS -0.018, MoNuSeg -0.007, lung -0.061) for 1.0-1.5x centre prompts/s: not the default
    rank_stride: int = 1
    # squares of sides up to ``offset_max`` also placed with the clicks off their centre, moved by ``offset`` x the
    # side along the 4 diagonals (8: and the axes); 0: never (the default). With the fitted ranking
    # (``SearchSettings.fitted()``) MoNuSeg random1 Dice rose 0.40 -> 0.64 held out, but GlaS centre fell 0.837 ->
    # 0.785 and the CT lung 0.627 -> 0.325: docs/protocols.md "A fitted ranking and off-centre squares"
    offset: float = 0.0
    offset_max: float = 32.0
    offset_directions: int = 4
    # the best candidate's mask asks the model once more with its own tight box grown by this many model-input px
    # (a box the search did not try: fitted to the object the search found), kept first when it honours the
    # clicks; 0: never. Chosen on GlaS train (8 images) and MoNuSeg train (3), 40 objects each: centre Dice
    # 0.808 -> 0.817, 0.691 -> 0.694, random1 0.568 -> 0.582, 0.419 -> 0.432 (3 px: 0.814, 0.696, 0.581, 0.435;
    # 8 px: 0.822, 0.692, 0.585, 0.429), iter5 and box+iter5 +0.001..0.003, for one small decode per click
    tighten: float = 5.0

    @classmethod
    def fitted(cls, **changes) -> SearchSettings:
        """The fitted ranking with what it was fitted on: off-centre squares, clicks within 3 px inside."""
        return cls(**{"ranker": FITTED_RANKER, "offset": 0.3, "reach": 3.0, **changes})

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSettings:
        """The ranking a ``medsamkit fit-clicks`` run wrote (its ranking.json, or the run folder holding it); the
        optional keys ``sides`` (box sides, model-input px), ``aspects`` (width / height; [1] = squares only),
        ``window_factor`` and ``max_window`` change the candidate boxes and their decoding windows too."""
        path = ranking_path(path)
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read a click ranking ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(spec, dict) or spec.get("format") != RANKING_FORMAT:
            raise InputError(f"{path}: not a click ranking (written by `medsamkit fit-clicks`)")
        if list(spec.get("features", [])) != list(FEATURES):
            raise InputError(f"{path}: ranks on features {spec.get('features')}, this version on {list(FEATURES)}")
        try:
            ranker = tuple(float(w) for w in spec.get("ranker"))
            offset, reach = float(spec.get("offset")), float(spec.get("reach"))
            refine = int(spec.get("refine_sides", 2))
        except (TypeError, ValueError):
            raise InputError(f"{path}: ranker, offset, reach and refine_sides must be numbers") from None
        if len(ranker) != 2 * len(FEATURES) + 1:
            raise InputError(f"{path}: ranker needs {2 * len(FEATURES) + 1} weights, not {len(ranker)}")
        if not np.isfinite([*ranker, offset, reach]).all() or min(offset, reach, refine) < 0:
            raise InputError(f"{path}: ranker, offset and reach must be finite (offset, reach, refine_sides >= 0)")
        numbers = lambda values: tuple(float(v) for v in values)  # noqa: E731
        geometry = (("sides", numbers), ("aspects", numbers), ("window_factor", float), ("max_window", int))
        try:
            if not all(isinstance(spec.get(key, []), list) for key in ("sides", "aspects")):
                raise TypeError  # a string would be read as its characters
            boxes = {key: read(spec[key]) for key, read in geometry if key in spec}
        except (TypeError, ValueError):
            raise InputError(f"{path}: sides and aspects must be lists of numbers, window_factor a number and "
                             f"max_window an integer") from None
        lists = (*boxes.get("sides", ()), *boxes.get("aspects", ()), boxes.get("window_factor", 1.0))
        if not all(np.isfinite(v) and v > 0 for v in lists) or () in (boxes.get("sides"), boxes.get("aspects")) \
                or boxes.get("max_window", 0) < 0:
            raise InputError(f"{path}: sides, aspects and window_factor must be positive (at least one side and "
                             f"aspect), max_window >= 0")
        return cls(ranker=ranker, offset=offset, reach=reach, refine_sides=refine, **boxes)

    def __post_init__(self) -> None:
        if self.rank_stride not in (1, 2, 4):
            raise InputError(f"rank_stride must be 1, 2 or 4 (the decoder's upscaling taps), not {self.rank_stride}")
        if self.offset_directions not in (4, 8):
            raise InputError(f"offset_directions must be 4 (diagonals) or 8 (and the axes), not "
                             f"{self.offset_directions}")
        if self.ranker and len(self.ranker) != 2 * len(FEATURES) + 1:
            raise InputError(f"ranker needs {2 * len(FEATURES) + 1} weights ([f, f^2, 1] of the features "
                             f"{', '.join(FEATURES)}), not {len(self.ranker)}")


def search_settings(path: str | Path | None) -> SearchSettings | None:
    """The settings of a ranking file (``SearchSettings.from_file``), None without one (the default search)."""
    return SearchSettings.from_file(path) if path else None


def ranking_path(path: str | Path) -> Path:
    """A ranking file given as itself or as the `medsamkit fit-clicks` run folder holding it."""
    path = Path(path)
    return path / RANKING_FILE if path.is_dir() else path


def ranking_identity(path: str | Path | None) -> dict:
    """What identifies a ranking file in a run's resume check: its sha256 (none for the default ranking)."""
    if not path or not ranking_path(path).is_file():
        return {}
    return {"click_ranker_sha256": sha256_of(ranking_path(path))}


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

    Boxes are decoded on a window of the embedding around them (``models.local_decode``), at most
    ``settings.max_window`` tokens when set; windows reaching ``settings.full_window`` decode on the whole embedding,
    where the work shared by all prompts makes a large window no cheaper."""
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


def rank(cands: Candidates, clicks: np.ndarray, labels: np.ndarray, settings: SearchSettings,
         per_px: float = 1.0) -> np.ndarray:
    """Scores (K,) of the candidates for clicks (N, 2; sampled low-res px) with labels (N,): candidates that
    break a click (a negative inside, a positive farther than ``settings.reach``) rank below every one that
    honours all, fewer broken clicks first."""
    labels = np.asarray(labels)
    features = ranking_features(cands, clicks, labels, per_px, settings.reach, settings.stability_offset)
    clicks = np.asarray(clicks)
    positives, negatives = clicks[labels == 1], clicks[labels != 1]
    reach = settings.reach / cands.stride
    # a positive click can be out of reach only where the farthest one is (clicks_inside 0)
    far = features[:, FEATURES.index("clicks_inside")] == 0
    broken = np.array([(sum(click_distance(m, p[None]) > reach for p in positives) if out else 0)
                       + (~honours(m, negatives, np.zeros(len(negatives)))).sum()
                       for m, out in zip(cands.masks, far)], dtype=np.float64)
    features[broken > 0, FEATURES.index("click_depth")] = 0.0  # a candidate breaking a click has no depth
    return score_features(features, settings.ranker) - 10.0 * broken


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
    per_px = model.mask_input_size[0] / model.preprocessing.input_size
    sampled = [(clicks * per_px / settings.rank_stride, labels) for clicks, labels in prompts]
    positives = [clicks[labels == 1] for clicks, labels in prompts]
    others = tuple(a for a in settings.aspects if a != 1.0)
    if not settings.refine_sides or not others:
        boxes = [np.concatenate([candidate_boxes(pos, frame, settings), _offset_squares(pos, frame, settings)[0]])
                 for pos in positives]
        found = _decode(model, features, frame, boxes, settings)
        return _tightened(model, features, frame,
                          [_ranked(c, clicks, labels, settings, per_px) for c, (clicks, labels) in zip(found, sampled)],
                          sampled, settings)
    squares, square_sides = zip(*(_squares(pos, frame, settings) for pos in positives))
    first = _decode(model, features, frame, list(squares), settings)
    more = []
    for pos, cands, sides, (clicks, labels) in zip(positives, first, square_sides, sampled):
        scores = rank(cands, clicks, labels, settings, per_px)
        best = np.argsort(-scores, kind="stable")[: settings.refine_sides]
        more.append(candidate_boxes(pos, frame, settings, sides=tuple(sides[best]), aspects=others))
    second = _decode(model, features, frame, more, settings)
    return _tightened(model, features, frame, [_ranked(_joined(a, b), clicks, labels, settings, per_px)
                                               for a, b, (clicks, labels) in zip(first, second, sampled)],
                      sampled, settings)


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
                      np.concatenate([a.iou, b.iou]), np.concatenate([a.masks, b.masks]), a.stride)


def _squares(positives: np.ndarray, frame: tuple[int, int], settings: SearchSettings
             ) -> tuple[np.ndarray, np.ndarray]:
    """The square boxes of every side (K, 4), centred on the clicks and off them (``_offset_squares``), and
    the side each was made with (K,), duplicates (boxes clipped to the same one at the image border) removed."""
    off, off_sides = _offset_squares(positives, frame, settings)
    boxes = np.concatenate([candidate_boxes(positives, frame, settings, sides=(s,), aspects=(1.0,))
                            for s in settings.sides] + [off])
    sides = np.concatenate([np.asarray(settings.sides, dtype=np.float32), off_sides])
    _, first = np.unique(boxes, axis=0, return_index=True)
    keep = np.sort(first)
    return boxes[keep], sides[keep]


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


def _ranked(cands: Candidates, clicks: np.ndarray, labels: np.ndarray, settings: SearchSettings, per_px: float
            ) -> tuple[Candidates, np.ndarray]:
    """The candidates best first and their scores (clicks in low-res px)."""
    scores = rank(cands, clicks, labels, settings, per_px)
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
