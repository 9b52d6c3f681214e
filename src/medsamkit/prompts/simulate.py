"""Simulated prompts from a ground-truth mask (boxes, points, iterative clicks), seeded and reproducible.

Implements the prompt modes of docs/protocols.md (parsed in ``core.prompt_modes``). Points are (x, y) = (column, row); boxes are [x0, y0, x1, y1] with inclusive
maxima (MedSAM convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medsamkit.core.errors import InputError
from medsamkit.core.prompt_modes import VALID_FORMS, PromptMode, parse_mode


@dataclass
class Prompt:
    """What a SAM-family model is given: an optional box and labelled points (1 positive, 0 negative)."""

    box: np.ndarray | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    def __post_init__(self) -> None:
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)
        if len(self.labels) != len(self.points):
            raise InputError(f"prompt has {len(self.points)} points but {len(self.labels)} labels")

    def with_click(self, xy: np.ndarray | tuple[float, float], label: int) -> Prompt:
        """A new prompt with one more point ``xy`` (x, y) labelled ``label`` (1 positive, 0 negative)."""
        point = np.asarray(xy, dtype=np.float32).reshape(1, 2)
        return Prompt(
            box=None if self.box is None else self.box.copy(),
            points=np.concatenate([self.points, point]),
            labels=np.concatenate([self.labels, np.array([label], dtype=np.int32)]),
        )

    def as_dict(self) -> dict[str, object]:
        """Plain lists for JSON results files."""
        return {
            "box": None if self.box is None else self.box.tolist(),
            "points": self.points.tolist(),
            "labels": self.labels.tolist(),
        }


def _as_mask(mask: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"{what} must be a 2-D mask, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(row0, col0, row1, col1) inclusive of the mask's pixels, or None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def _farthest_from_background(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """(row, col) of the mask pixel with the largest distance to background (image border counts as such)."""
    bounds = _bounds(mask)
    if bounds is None:
        return None
    r0, c0, r1, c1 = bounds
    # The tight crop padded by one zero pixel gives the same transform as the whole padded image, cheaper.
    padded = np.pad(mask[r0 : r1 + 1, c0 : c1 + 1], 1)
    distance = ndimage.distance_transform_edt(padded)
    candidates = np.argwhere(distance == distance.max())
    pick = candidates[rng.integers(len(candidates))] if len(candidates) > 1 else candidates[0]
    return np.array([pick[0] - 1 + r0, pick[1] - 1 + c0])


def center_point(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The object pixel farthest from background as float32 (x, y); ties broken by a seeded choice."""
    mask = _as_mask(mask, "truth mask")
    rc = _farthest_from_background(mask, rng)
    if rc is None:
        raise InputError("cannot place a centre point: the mask is empty")
    return np.array([rc[1], rc[0]], dtype=np.float32)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """Tight box ``[x0, y0, x1, y1]`` (float32, inclusive maxima) of a non-empty mask."""
    bounds = _bounds(_as_mask(mask, "truth mask"))
    if bounds is None:
        raise InputError("cannot place a box: the mask is empty")
    r0, c0, r1, c1 = bounds
    return np.array([c0, r0, c1, r1], dtype=np.float32)


def random_points(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct object pixels drawn uniformly, float32 (n, 2) x, y; every pixel once if fewer than n."""
    mask = _as_mask(mask, "truth mask")
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise InputError("cannot draw random points: the mask is empty")
    chosen = rng.choice(rows.size, size=min(n, rows.size), replace=False)
    return np.stack([cols[chosen], rows[chosen]], axis=1).astype(np.float32)


def _clip_box(box: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    rows, cols = int(image_shape[0]), int(image_shape[1])
    limits = np.array([cols - 1, rows - 1, cols - 1, rows - 1], dtype=np.float32)
    return np.clip(box, 0, limits).astype(np.float32)


def initial_prompt(
    mode: PromptMode | str,
    truth_mask: np.ndarray,
    rng: np.random.Generator,
    image_shape: tuple[int, ...] | None = None,
) -> Prompt:
    """The first prompt of ``mode`` for an object (iter kinds: the centre point; box+iter: the box alone).

    ``image_shape`` (default: the mask's) bounds the enlarged and jittered boxes.
    """
    mode = parse_mode(mode) if isinstance(mode, str) else mode
    truth = _as_mask(truth_mask, "truth mask")
    shape = tuple(image_shape) if image_shape is not None else truth.shape
    if mode.kind in ("box", "box+iter"):
        return Prompt(box=tight_box(truth))
    if mode.kind == "box+":
        box = tight_box(truth) + np.array([-mode.k, -mode.k, mode.k, mode.k], dtype=np.float32)
        return Prompt(box=_clip_box(box, shape))
    if mode.kind == "jitter":
        offsets = rng.integers(-mode.k, mode.k + 1, size=4)
        box = _clip_box(tight_box(truth) + offsets.astype(np.float32), shape)
        # A thin object can have its sides jitter past each other; swapping keeps both within [-K, K].
        x0, x1 = sorted((box[0], box[2]))
        y0, y1 = sorted((box[1], box[3]))
        return Prompt(box=np.array([x0, y0, x1, y1], dtype=np.float32))
    if mode.kind in ("center", "iter"):
        return Prompt(points=center_point(truth, rng)[None], labels=[1])
    if mode.kind == "random":
        points = random_points(truth, mode.k, rng)
        return Prompt(points=points, labels=np.ones(len(points), dtype=np.int32))
    raise InputError(f"unknown prompt mode kind {mode.kind!r}; valid forms: {VALID_FORMS}")


def next_click(
    pred_mask: np.ndarray, truth_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, int] | None:
    """The corrective click (Mazurowski Alg. 1): the error pixel farthest from the error region's boundary.

    Returns float32 (x, y) and label 1 when it lies in the missed part (truth & ~pred), 0 when it lies in
    the false-positive part; None when prediction and truth agree. Ties are broken by a seeded choice.
    """
    pred = _as_mask(pred_mask, "predicted mask")
    truth = _as_mask(truth_mask, "truth mask")
    if pred.shape != truth.shape:
        raise InputError(f"predicted mask shape {pred.shape} does not match truth mask shape {truth.shape}")
    rc = _farthest_from_background(pred ^ truth, rng)
    if rc is None:
        return None
    label = 1 if truth[rc[0], rc[1]] else 0
    return np.array([rc[1], rc[0]], dtype=np.float32), label


def prompt_signature(prompt: Prompt) -> tuple:
    """A hashable key of a prompt (box + ordered labelled points)."""
    box = None if prompt.box is None else tuple(np.round(prompt.box, 3).tolist())
    points = tuple((round(float(x), 3), round(float(y), 3), int(v))
                   for (x, y), v in zip(prompt.points.tolist(), prompt.labels.tolist()))
    return box, points


def parent_signature(prompt: Prompt) -> tuple | None:
    """The signature of the prompt this one extends by its last click, None without clicks."""
    if len(prompt.points) == 0:
        return None
    return prompt_signature(Prompt(prompt.box, prompt.points[:-1], prompt.labels[:-1]))


def stack_prompts(prompts: list[Prompt]) -> dict[str, np.ndarray]:
    """Batch prompts for ``Predictor.predict``: ``boxes`` (P,4) when every prompt has one; ``points`` (P,N,2)
    and ``point_labels`` (P,N) padded with label -1 (not a point) when any prompt has points."""
    kwargs: dict[str, np.ndarray] = {}
    if all(p.box is not None for p in prompts):
        kwargs["boxes"] = np.stack([p.box for p in prompts])
    n = max(len(p.points) for p in prompts)
    if n:
        pts = np.zeros((len(prompts), n, 2), dtype=np.float32)
        lab = -np.ones((len(prompts), n), dtype=np.int64)
        for i, p in enumerate(prompts):
            pts[i, : len(p.points)] = p.points
            lab[i, : len(p.labels)] = p.labels
        kwargs["points"], kwargs["point_labels"] = pts, lab
    return kwargs
