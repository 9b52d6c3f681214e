"""``/api/info``, an item's view as a PNG, its objects and label map, and opening a view (its embedding)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from medsamkit.annotate.http.encoders import info_reply, label_rgba, objects_reply, opened_reply, png_response
from medsamkit.annotate.http.requests import OpenRequest, PathId, session
from medsamkit.annotate.session.workspace import Workspace
from medsamkit.core.errors import InputError

router = APIRouter(prefix="/api")


@router.get("/info")
def info(ws: Workspace = Depends(session)) -> dict:
    """Model, prompt kinds, classes and the image list."""
    return info_reply(ws.info())


@router.get("/image/{image}")
def image(image: PathId, slice: int | None = None, axis: int = 0, contrast: str = "auto",
          ws: Workspace = Depends(session)) -> Response:
    """The view as an 8-bit PNG (contrast preset applied)."""
    return png_response(ws.display(image, axis, slice, contrast), "private, max-age=3600")


@router.get("/objects/{image}")
def objects(image: PathId, ws: Workspace = Depends(session)) -> dict:
    """The image's objects and whether undo/redo are possible."""
    return objects_reply(ws.objects(image))


@router.get("/labels/{image}")
def labels(image: PathId, format: str = "png", ws: Workspace = Depends(session)) -> Response:
    """The saved instance label map: uint16 PNG, or ``format=rgba`` (id = R + 256 G) for the page."""
    label = ws.labels_image(image)
    if format not in ("png", "rgba"):
        raise InputError(f"format must be png or rgba, got {format!r}")
    return png_response(label if format == "png" else label_rgba(label), "no-store")


@router.post("/open")
async def open_view(req: OpenRequest, ws: Workspace = Depends(session)) -> dict:
    """Embed a view; without ``wait`` the embedding runs in the background (the next image)."""
    opened = ws.open(req.image, req.axis, req.slice, wait=False)
    if req.wait and not opened.ready:
        await asyncio.wrap_future(ws.embedding(req.image, req.axis, req.slice))
        opened = ws.open(req.image, req.axis, req.slice, wait=True)
    return opened_reply(opened)
