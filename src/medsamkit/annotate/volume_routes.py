"""The volume part of the annotation API (registered by ``annotate.server.create_app``).

Every 2D route works on a volume's view with ``"axis"`` (0 axial, 1 coronal, 2 sagittal) and ``"slice"``;
these routes add what only volumes have:

- ``GET /api/volume/{id}`` -> geometry: shape (z, y, x), spacing (mm), RAS affine, per axis the slice count,
  view shape and aspect (row / column spacing: the page scales rows by it), display windows (CT presets or
  MR percentiles), the label classes of the input, ``three_slice``.
- ``GET /api/volume/{id}/view?axis=&slice=&window=lung|soft_tissue|bone|brain|auto|full|high|model
  &level=&width=`` -> the view as an 8-bit PNG in that display window (the model input never changes).
- ``GET /api/volume/{id}/labels?axis=&slice=`` -> object ids on the view (RGBA, id = R + 256 G).
- ``POST /api/correct`` ``{"image", "axis", "slice", "object", "candidate"}``: the last answer on that view
  replaces the object there (the view counts as corrected: propagation never overwrites it).
- ``POST /api/propagate`` ``{"image", "object", "axis", "slice", "direction": "up"|"down"|"both",
  "min_iou", "min_area", "margin"}`` -> the objects plus ``visited`` (per view: slice, predicted IoU, area,
  kept), ``stops`` (per direction: slice and reason: "IoU below threshold", "area below minimum",
  "volume edge", "corrected slice"), seconds, encoder passes and seconds per slice.

Out-of-range axes or slices answer 400 with one line; unknown volumes or objects 404.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, Field

from medsamkit.annotate.propagation import Propagator, correct_view, propagate_object
from medsamkit.annotate.storage import png_bytes
from medsamkit.annotate.volume_source import view_stack
from medsamkit.annotate.workspace import label_rgba
from medsamkit.core.errors import InputError


class CorrectRequest(BaseModel):
    """Replace an object's pixels on one view by the last answer there."""

    image: str
    axis: int = 0
    slice: int
    object: int
    candidate: int | None = None


class PropagateRequest(BaseModel):
    """Propagate an object from its mask on one view."""

    image: str
    object: int
    axis: int = 0
    slice: int
    direction: str = "both"
    min_iou: float = Field(default=0.0, ge=0.0, le=1.0)
    min_area: int = Field(default=20, ge=0)
    margin: float = Field(default=0.0, ge=0.0, le=64.0)


def _volume(ws, image: str):
    entry = ws.source.entry(image)
    if entry.kind != "volume":
        raise InputError(f"image {image!r} is 2D: no volume geometry")
    return entry


def register_volume_routes(app: FastAPI, ws) -> None:
    """Add the volume routes to a session's app."""
    propagator = Propagator(ws.segmenter)
    app.state.propagator = propagator

    @app.get("/api/volume/{image}")
    def geometry(image: str) -> dict:
        """Shape, spacing, affine, per-axis slices and aspect, display windows."""
        return {"id": image, **_volume(ws, image).geometry}

    @app.get("/api/volume/{image}/view")
    def view(image: str, axis: int = 0, slice: int = 0, window: str | None = None,
             level: float | None = None, width: float | None = None) -> Response:
        """One view as an 8-bit PNG in a display window."""
        pixels = _volume(ws, image).display(axis, slice, window, level, width)
        return Response(png_bytes(pixels), media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    @app.get("/api/volume/{image}/labels")
    def labels(image: str, axis: int = 0, slice: int = 0) -> Response:
        """Object ids on one view, packed as RGBA (id = R + 256 G)."""
        entry = _volume(ws, image)
        axis, k = entry.check_view(axis, slice)
        ids = view_stack(ws.state(image).label, axis)[k]
        return Response(png_bytes(label_rgba(ids)), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/api/correct")
    def correct(req: CorrectRequest) -> dict:
        """Correct an object on one view with the last answer there."""
        return correct_view(ws, req.image, req.object, req.axis, req.slice, req.candidate)

    @app.post("/api/propagate")
    def propagate(req: PropagateRequest) -> dict:
        """Propagate an object up/down from one view with the project's engine."""
        return propagate_object(ws, propagator, req.image, req.object, req.axis, req.slice, req.direction,
                                req.min_iou, req.min_area, req.margin)
