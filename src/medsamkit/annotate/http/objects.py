"""Changing committed objects: class and visibility, delete, undo and redo (every change saved at once)."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends

from medsamkit.annotate.http.encoders import objects_reply
from medsamkit.annotate.http.requests import ImageRequest, ObjectRequest, UpdateRequest, session
from medsamkit.annotate.session.workspace import Workspace

router = APIRouter(prefix="/api")


@router.post("/objects/update")
def update(req: UpdateRequest, ws: Workspace = Depends(session)) -> dict:
    """Rename an object's class or hide/show it."""
    return objects_reply(ws.update(req.image, req.object, req.class_, req.hidden))


@router.post("/objects/delete")
def delete(req: ObjectRequest, ws: Workspace = Depends(session)) -> dict:
    """Delete an object."""
    return objects_reply(ws.delete(req.image, req.object))


@router.post("/undo")
def undo(req: ImageRequest = Body(...), ws: Workspace = Depends(session)) -> dict:
    """Undo the image's last change."""
    done = ws.undo(req.image)
    return {**objects_reply(done.objects), "undone": done.step}


@router.post("/redo")
def redo(req: ImageRequest = Body(...), ws: Workspace = Depends(session)) -> dict:
    """Redo the image's last undone change."""
    done = ws.redo(req.image)
    return {**objects_reply(done.objects), "redone": done.step}
