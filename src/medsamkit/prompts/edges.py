"""Image edges under a candidate's boundary: a term of the click search's ranking (``prompts.search``).

An object's outline lies on edges of the image; a part of an object (its outline cutting through it) or a blob of
several (the outline passing between them) has less edge under it. The view's grey levels are brought to the
model's low-res frame, their Gaussian gradient magnitude (sigma 1 low-res px) is divided by its mean over the image
part, and a candidate scores the mean of that over its boundary pixels (``metrics.surface.surface_of``).
Chosen on GlaS train and MoNuSeg train (docs/protocols.md "Edges under the outline").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from medsamkit.metrics.surface import surface_of
from medsamkit.prompts.walker import grey


def edge_map(image: np.ndarray, frame: tuple[int, int], size: int) -> np.ndarray:
    """The view ``image``'s (H, W[, C]) gradient magnitude in the low-res frame (size x size): its grey levels
    resized to the image part ``frame`` (h, w; low-res px) at the frame's top left over their standard deviation,
    zero beyond, the Gaussian gradient magnitude of that over its mean on the image part (1: an average edge)."""
    h, w = int(frame[0]), int(frame[1])
    g = grey(image)
    frame_img = np.zeros((size, size), dtype=np.float32)
    small = resize(g, (h, w), preserve_range=True).astype(np.float32)
    frame_img[:h, :w] = small / max(float(small.std()), 1e-6)
    edges = ndimage.gaussian_gradient_magnitude(frame_img, 1.0)
    return edges / max(float(edges[:h, :w].mean()), 1e-6)


def boundary_edges(masks: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per mask (K, H, W; the frame of ``edges``, possibly sampled: then ``edges`` sampled alike), the mean of
    ``edges`` over its boundary pixels (0 for a mask of fewer than 4 pixels)."""
    out = np.zeros(len(masks))
    for k, m in enumerate(masks):
        if np.count_nonzero(m) < 4:
            continue
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        y0, y1 = max(rows[0] - 1, 0), rows[-1] + 2
        x0, x1 = max(cols[0] - 1, 0), cols[-1] + 2
        crop = m[y0:y1, x0:x1]  # with a 1 px background margin where the frame goes on: its surface is the frame's
        out[k] = float(edges[y0:y1, x0:x1][surface_of(crop)].mean())
    return out
