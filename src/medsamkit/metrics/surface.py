"""Surface metrics for binary masks in 2D or 3D: HD95 and normalised surface Dice (NSD), spacing-aware.

Surface: the foreground pixels/voxels with at least one face-connected (4-neighbour in 2D, 6 in 3D)
background neighbour; outside the array counts as background, so a mask touching the border has a
surface there (MONAI's ``get_mask_edges`` convention). Distances are Euclidean in mm (``spacing`` per
axis, default 1) from each surface point of one mask to the nearest surface point of the other.
HD95 = max of the two directed 95th percentiles (linear interpolation), as MONAI computes it.
NSD = (surface points of either mask within ``tolerance_mm`` of the other's surface) / (all surface points).
Empty masks: both empty -> HD95 0.0, NSD 1.0; exactly one empty -> HD95 inf, NSD 0.0.

Two NSD conventions (``NSD_CONVENTIONS``): ``voxel`` counts boundary voxels as above (MONAI's default
``compute_surface_dice``; the test suite checks the two agree), ``surfel`` weights every surface element by its
area on the voxel-corner lattice, as DeepMind's surface-distance code does and the MedSAM / CVPR 2024-2025
challenges score (MONAI's ``compute_surface_dice(..., use_subvoxels=True)``). Tables name the one they use.
HD95 here is always the boundary-voxel one (``HD95_CONVENTION``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medsamkit.core.errors import InputError
from medsamkit.metrics.overlap import checked_pair

NSD_CONVENTIONS = ("voxel", "surfel")
HD95_CONVENTION = "boundary voxels, max of the two directed 95th percentiles"


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = np.atleast_1d(np.asarray(spacing, dtype=float))
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.shape != (ndim,):
        raise InputError(
            f"spacing {tuple(np.atleast_1d(spacing))} has {values.size} values; the masks have {ndim} axes"
        )
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise InputError(f"spacing {tuple(values.tolist())} must be positive and finite")
    return tuple(float(v) for v in values)


def surface_of(mask: np.ndarray) -> np.ndarray:
    """The mask's surface: its pixels / voxels with a face neighbour outside it (beyond the array counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every prediction surface point to the truth surface, and truth to prediction.

    Both masks must be non-empty (the empty cases have no distances; ``hd95``/``nsd`` handle them).
    """
    pred, truth = checked_pair(pred, truth)
    p = pred != 0
    t = truth != 0
    if p.ndim == 0:
        raise InputError("masks must have at least one axis")
    sampling = _spacing(spacing, p.ndim)
    if not p.any() or not t.any():
        raise InputError("surface distances need two non-empty masks")
    # Crop to the joint bounding box: every surface point lies inside it, and everything outside is
    # background for both masks, so distances and surfaces are unchanged while 3D volumes get cheap.
    box = ndimage.find_objects((p | t).astype(np.uint8))[0]
    p, t = p[box], t[box]
    sp, st = surface_of(p), surface_of(t)
    to_truth = ndimage.distance_transform_edt(~st, sampling=sampling)[sp]
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)[st]
    return to_truth, to_pred


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm; 0.0 if both masks are empty, inf if one is."""
    pred, truth = checked_pair(pred, truth)
    has_p, has_t = bool(np.any(pred)), bool(np.any(truth))
    if not has_p and not has_t:
        _spacing(spacing, pred.ndim)
        return 0.0
    if has_p != has_t:
        _spacing(spacing, pred.ndim)
        return float("inf")
    to_truth, to_pred = surface_distances(pred, truth, spacing)
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def nsd(
    pred: np.ndarray,
    truth: np.ndarray,
    tolerance_mm: float = 1.0,
    spacing: float | Sequence[float] | None = None,
) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (distance <= tolerance counts); 1.0 both empty, 0.0 one empty."""
    pred, truth = checked_pair(pred, truth)
    if not (np.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise InputError(f"NSD tolerance {tolerance_mm} mm must be a non-negative number")
    has_p, has_t = bool(np.any(pred)), bool(np.any(truth))
    if has_p != has_t or not has_p:
        _spacing(spacing, pred.ndim)
        return 1.0 if not has_p and not has_t else 0.0
    to_truth, to_pred = surface_distances(pred, truth, spacing)
    close = np.count_nonzero(to_truth <= tolerance_mm) + np.count_nonzero(to_pred <= tolerance_mm)
    return float(close / (to_truth.size + to_pred.size))


def _nsd_surfel(p: np.ndarray, t: np.ndarray, tolerance_mm: float, sampling: tuple[float, ...]) -> float:
    """Surfel-area weighted NSD of two non-empty bool masks, by MONAI, on their joint box padded by one voxel
    (outside the array counts as background, as in DeepMind's code)."""
    import torch
    from monai.metrics import compute_surface_dice

    box = ndimage.find_objects((p | t).astype(np.uint8))[0]
    p, t = np.pad(p[box], 1), np.pad(t[box], 1)

    def onehot(m: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal argument
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(onehot(p), onehot(t), [float(tolerance_mm)], include_background=False,
                                     spacing=list(sampling), use_subvoxels=True)
    return float(value.reshape(-1)[0])


def surface_dice(
    pred: np.ndarray,
    truth: np.ndarray,
    tolerance_mm: float = 1.0,
    spacing: float | Sequence[float] | None = None,
    convention: str = "voxel",
) -> float:
    """NSD at ``tolerance_mm`` in the named convention (``voxel``: boundary voxels counted, ``surfel``: surface
    elements weighted by area, DeepMind's / the challenges'); 1.0 both empty, 0.0 one empty."""
    if convention not in NSD_CONVENTIONS:
        raise InputError(f"unknown NSD convention {convention!r}; choose one of: {', '.join(NSD_CONVENTIONS)}")
    if convention == "voxel":
        return nsd(pred, truth, tolerance_mm, spacing)
    pred, truth = checked_pair(pred, truth)
    if not (np.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise InputError(f"NSD tolerance {tolerance_mm} mm must be a non-negative number")
    p, t = pred != 0, truth != 0
    if p.ndim not in (2, 3):
        raise InputError(f"surfel NSD needs 2D or 3D masks, got {p.ndim} axes")
    sampling = _spacing(spacing, p.ndim)
    has_p, has_t = bool(p.any()), bool(t.any())
    if has_p != has_t or not has_p:
        return 1.0 if not has_p and not has_t else 0.0
    return _nsd_surfel(p, t, tolerance_mm, sampling)
