"""What only volumes have (every 2D route works on a volume's view with ``"axis"`` and ``"slice"``):

- ``GET /api/volume/{id}`` -> geometry: shape (z, y, x), spacing (mm), RAS affine, per axis the slice count,
  view shape and aspect (row / column spacing: the page scales rows by it), display windows (CT presets or
  MR percentiles), the label classes of the input, ``three_slice``.
- ``GET /api/volume/{id}/view?axis=&slice=&window=lung|soft_tissue|bone|brain|auto|full|high|model
  &level=&width=`` -> the view as an 8-bit PNG in that display window (the model input never changes).
- ``GET /api/volume/{id}/labels?axis=&slice=`` -> object ids on the view (RGBA, id = R + 256 G).
- ``POST /api/correct`` ``{"image", "axis", "slice", "object", "candidate", "client"}``: the client's last answer
  on that view replaces the object there (the view counts as corrected: propagation never overwrites it).
- ``POST /api/propagate`` ``{"image", "object", "axis", "slice", "direction": "up"|"down"|"both",
  "min_iou", "min_area", "margin"}`` -> the objects plus ``visited`` (per view: slice, predicted IoU, area,
  kept), ``stops`` (per direction: slice and reason: "IoU below threshold", "area below minimum",
  "volume edge", "corrected slice"), seconds, encoder passes and seconds per slice.

- ``POST /api/box3d`` ``{"image", "axis", "box3d": [z_min, z_max, z, x0, y0, x1, y1], "class", "client"}``: the
  3D engine (``annotate.model.engine3d``, the one ``evaluate-volume --protocol cvpr25`` and ``segment-volume
  --box3d`` use) answers the box on views z_min..z_max of the axis: a new object -> the objects plus ``object``,
  ``changed`` (views), the engine's ``trace``, ``encoded``, ``seconds``.
- ``POST /api/click3d`` ``{"image", "object", "axis", "slice", "x", "y", "positive", "client"}``: the click
  corrects that view with the clicks machinery and the engine re-propagates from it (the view becomes a
  corrected one); same reply.

Out-of-range axes or slices answer 400 with one line; unknown volumes or objects 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from medsamkit.annotate.http.encoders import (
    engined_reply,
    label_rgba,
    objects_reply,
    png_response,
    propagated_reply,
)
from medsamkit.annotate.http.requests import (
    Box3DRequest,
    Click3DRequest,
    CorrectRequest,
    PathId,
    PropagateRequest,
    session,
)
from medsamkit.annotate.session.workspace import Workspace
from medsamkit.core.errors import InputError
from medsamkit.volumes.engine import Box3D

router = APIRouter(prefix="/api")


@router.get("/volume/{image}")
def geometry(image: PathId, ws: Workspace = Depends(session)) -> dict:
    """Shape, spacing, affine, per-axis slices and aspect, display windows."""
    return {"id": image, **ws.item(image).as_volume("no volume geometry").geometry}


@router.get("/volume/{image}/view")
def view(image: PathId, axis: int = 0, slice: int = 0, window: str | None = None, level: float | None = None,
         width: float | None = None, ws: Workspace = Depends(session)) -> Response:
    """One view as an 8-bit PNG in a display window."""
    volume = ws.item(image).as_volume("no volume geometry")
    return png_response(volume.display(axis, slice, window, level, width), "private, max-age=600")


@router.get("/volume/{image}/labels")
def labels(image: PathId, axis: int = 0, slice: int = 0, ws: Workspace = Depends(session)) -> Response:
    """Object ids on one view, packed as RGBA (id = R + 256 G)."""
    return png_response(label_rgba(ws.view_labels(image, axis, slice)), "no-store")


@router.post("/correct")
def correct(req: CorrectRequest, ws: Workspace = Depends(session)) -> dict:
    """Correct an object on one view with the client's last answer there."""
    done = ws.correct(req.image, req.object, req.axis, req.slice, req.candidate, req.client)
    object_id, axis, k = done.view
    return {**objects_reply(done.objects), "corrected": {"object": object_id, "axis": axis, "slice": k}}


@router.post("/propagate")
def propagate(req: PropagateRequest, ws: Workspace = Depends(session)) -> dict:
    """Propagate an object up/down from one view with the project's engine."""
    return propagated_reply(ws.propagate(req.image, req.object, req.axis, req.slice, req.direction, req.min_iou,
                                         req.min_area, req.margin))


@router.post("/box3d")
def box3d(req: Box3DRequest, ws: Workspace = Depends(session)) -> dict:
    """A new object from a 3D box, answered by the 3D engine."""
    z_min, z_max, z, *box = req.box3d
    if any(v != int(v) for v in (z_min, z_max, z)):
        raise InputError(f"box3d {req.box3d}: z_min, z_max and z must be whole slice numbers")
    return engined_reply(ws.box3d(req.image, req.axis, Box3D(int(z_min), int(z_max), int(z), tuple(box)), req.class_,
                                  req.client))


@router.post("/click3d")
def click3d(req: Click3DRequest, ws: Workspace = Depends(session)) -> dict:
    """Correct an object on one view with a click and re-propagate it with the 3D engine."""
    return engined_reply(ws.click3d(req.image, req.object, req.axis, req.slice, req.x, req.y, req.positive,
                                    req.client))
