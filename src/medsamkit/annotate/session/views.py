"""The view a 2D prompt is answered on: the evaluate engine's view rule (``core.tiling``) applied to the
object being made, so the annotator answers a box exactly as ``evaluate`` does.

A box is the object's extent: ``tile_size_for`` + ``plan_tiles`` (the auto rule, the evaluate default
overlap) choose the whole image or a native-resolution tile around it. A click-only prompt does not say how
big the object is, so its size is taken as the median longer side of the objects already committed in the
session (the whole view before any commit), centred on the first click. The view is chosen when an object
starts and kept for its follow-up clicks (their mask-feedback logits belong to that view's embedding);
answers are pasted back into full-image coordinates. ``ViewRule`` holds a session's committed sizes; volumes
keep their whole-slice views (``VolumeItem.model_view``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

from medsamkit.core.objects import ImageObject, Window
from medsamkit.core.tiling import AutoTile, grid_windows, plan_tiles, tile_size_for, to_window_coords
from medsamkit.prompts.simulate import Prompt

VIEW_OVERLAP = 64  # the tile grid overlap of `evaluate` and `finetune` (their --tile-overlap default)


def whole_window(shape: Sequence[int]) -> Window:
    """The whole image as a window."""
    return 0, 0, int(shape[0]), int(shape[1])


def _extent_object(r0: int, c0: int, r1: int, c1: int, shape: Sequence[int]) -> ImageObject | None:
    """A filled object over rows [r0, r1), cols [c0, c1) clipped to the image; None when nothing is left."""
    r0, c0 = max(int(r0), 0), max(int(c0), 0)
    r1, c1 = min(int(r1), int(shape[0])), min(int(c1), int(shape[1]))
    if r0 >= r1 or c0 >= c1:
        return None
    crop = np.ones((r1 - r0, c1 - c0), dtype=bool)
    return ImageObject(0, (slice(r0, r1), slice(c0, c1)), crop, int(crop.size))


def view_of_object(obj: ImageObject | None, shape: Sequence[int], input_size: int) -> Window:
    """The window the evaluate rule gives ``obj`` on an image of ``shape`` (whole image for None)."""
    size = (int(shape[0]), int(shape[1]))
    if obj is None:
        return whole_window(size)
    tile = tile_size_for(size, None, input_size)
    (window,) = plan_tiles([obj], size, tile, VIEW_OVERLAP)
    return tuple(int(v) for v in window)


def view_tiles(shape: Sequence[int], input_size: int) -> list[Window]:
    """The grid tiles the rule answers small objects on (empty when every object keeps the whole view)."""
    size = (int(shape[0]), int(shape[1]))
    tile = tile_size_for(size, None, int(input_size))
    if not isinstance(tile, AutoTile):
        return []
    return [tuple(int(v) for v in w) for w in grid_windows(size, tile, min(VIEW_OVERLAP, tile - 1))]


def box_view(box: Sequence[float], shape: Sequence[int], input_size: int) -> Window:
    """The view of a box ``[x0, y0, x1, y1]`` (maxima inclusive, as ``ImageObject.box``)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    obj = _extent_object(np.floor(y0), np.floor(x0), np.ceil(y1) + 1, np.ceil(x1) + 1, shape)
    return view_of_object(obj, shape, input_size)


def click_view(point: Sequence[float], committed_sides: Sequence[int], shape: Sequence[int],
               input_size: int) -> Window:
    """The view of a click-only object: a square of the committed objects' median longer side centred on
    the click (the whole image before any commit)."""
    if not committed_sides:
        return whole_window(shape)
    side = max(1, int(round(statistics.median(committed_sides))))
    x, y = (int(np.floor(v)) for v in point[:2])
    r0, c0 = y - side // 2, x - side // 2
    return view_of_object(_extent_object(r0, c0, r0 + side, c0 + side, shape), shape, input_size)


def prompt_in_view(prompt: Prompt, window: Window) -> Prompt:
    """The prompt in the window's coordinates."""
    box = None if prompt.box is None else to_window_coords(prompt.box, window)
    points = to_window_coords(prompt.points, window) if len(prompt.points) else prompt.points
    return Prompt(box=box, points=points, labels=prompt.labels)


def paste(masks: np.ndarray, window: Window, shape: Sequence[int]) -> np.ndarray:
    """Masks (C, h, w) of a window placed in full-image masks (C, H, W); the input itself for the whole view."""
    if tuple(window) == whole_window(shape):
        return masks
    y0, x0, y1, x1 = window
    full = np.zeros((masks.shape[0], int(shape[0]), int(shape[1])), dtype=masks.dtype)
    full[:, y0:y1, x0:x1] = masks
    return full


def longer_side(mask: np.ndarray) -> int:
    """The longer side of a mask's bounding box in pixels (0 for an empty mask)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return 0
    return int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))


class ViewRule:
    """The view rule of one session's 2D images: the committed objects' sizes, the view of a new object."""

    def __init__(self) -> None:
        self.committed_sides: list[int] = []  # longer sides (px) of this run's 2D commits: click-only views

    def window(self, prompt: Prompt, shape: Sequence[int], input_size: int) -> Window:
        """The model view of a new object's prompt on an image of ``shape``."""
        if prompt.box is not None:
            return box_view(prompt.box, shape, input_size)
        if not len(prompt.points):
            return whole_window(shape)  # no prompt: the segmenter says so
        return click_view(prompt.points[0], self.committed_sides, shape, input_size)

    def remember(self, mask: np.ndarray) -> None:
        """A committed object's size, for the views of later click-only objects."""
        self.committed_sides.append(longer_side(mask))
