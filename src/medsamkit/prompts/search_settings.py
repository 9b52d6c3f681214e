"""The settings of the click search (``prompts.search``): its candidate boxes, their decoding windows and the
ranking's weights, as defaults, or read from a ranking file that ``medsamkit fit-clicks`` wrote (or a person edited)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.models.checkpoints import sha256_of
from medsamkit.prompts.ranking import FEATURES, FITTED_RANKER, HAND_RANKER

RANKING_FORMAT = "medsamkit click ranking v1"  # ``medsamkit fit-clicks``'s ranking.json
RANKING_FILE = "ranking.json"


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
    # boxes grown from the image content: per threshold t, the connected region of embedding tokens whose features
    # resemble the positive clicks' (cosine similarity > t) boxed and grown by the larger of ``similar_margin`` px and
    # ``similar_grow`` x its side (``similar_boxes``); squares centred on a click off an object's centre cut the
    # object, these frame it. () : none. Chosen on GlaS train (8 images) and MoNuSeg train (3), 40 objects each:
    # centre Dice 0.817 -> 0.842, 0.694 -> 0.720, random1 0.582 -> 0.654, 0.432 -> 0.486 (docs/protocols.md
    # "Boxes grown from the image content")
    similar: tuple[float, ...] = (0.4, 0.6, 0.8)
    similar_margin: float = 2.0
    similar_grow: float = 0.2
    # image edges under a candidate's outline (``prompts.edges``; searches given the view's image): this x their mean
    # (1: the view's average edge) is added to the score; 0: none. Chosen on GlaS train and MoNuSeg train
    # (docs/protocols.md "Edges under the outline")
    edge_weight: float = 0.4
    # the answer keeps only the connected parts of the chosen mask that hold a positive click (a box frames other
    # objects too). Chosen on GlaS train 1-8 / 9-20 and MoNuSeg train 1-3 / 4-9: random1 Dice +0.014 / +0.017 on
    # GlaS, +0.000 / +0.001 on MoNuSeg, centre and iter5 within 0.0002 (docs/protocols.md "The clicked parts")
    clicked_parts: bool = True

    @classmethod
    def fitted(cls, **changes) -> SearchSettings:
        """The fitted ranking with what it was fitted on: off-centre squares, clicks within 3 px inside, no boxes
        grown from the image content, no edge term."""
        return cls(**{"ranker": FITTED_RANKER, "offset": 0.3, "reach": 3.0, "similar": (), "edge_weight": 0.0,
                      **changes})

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSettings:
        """The ranking a ``medsamkit fit-clicks`` run wrote (its ranking.json, or the run folder holding it); the
        optional keys ``sides`` (box sides, model-input px), ``aspects`` (width / height; [1] = squares only),
        ``window_factor`` and ``max_window`` change the candidate boxes and their decoding windows too, ``similar``
        the thresholds of the boxes grown from the image content (none when absent: files written before them)."""
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
        similar = spec.get("similar", [])  # files written before the grown boxes were fitted without them
        if not isinstance(similar, list) or not all(isinstance(t, (int, float)) and -1 <= t < 1 for t in similar):
            raise InputError(f"{path}: similar must be a list of similarity thresholds in [-1, 1)")
        edge_weight = spec.get("edge_weight", 0.0)  # files written before the edge term were fitted without it
        if not isinstance(edge_weight, (int, float)) or not np.isfinite(edge_weight):
            raise InputError(f"{path}: edge_weight must be a number")
        return cls(ranker=ranker, offset=offset, reach=reach, refine_sides=refine, similar=tuple(map(float, similar)),
                   edge_weight=float(edge_weight), **boxes)

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
