"""Prompting a view and turning answers into objects: predict, clear, commit, everything mode. Each request
names its client (the page's id): prompt sessions and proposals are the client's own."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from medsamkit.annotate.http.encoders import objects_reply, predicted_reply, proposals_reply
from medsamkit.annotate.http.requests import CommitRequest, PredictRequest, ProposalRequest, View, session
from medsamkit.annotate.session.workspace import Workspace

router = APIRouter(prefix="/api")


@router.post("/predict")
def predict(req: PredictRequest, ws: Workspace = Depends(session)) -> dict:
    """Candidate masks for a box and/or clicks."""
    return predicted_reply(ws.predict(req.image, req.axis, req.slice, req.box, req.points, req.multimask,
                                      req.mask_from, req.client))


@router.post("/clear")
def clear(req: View, ws: Workspace = Depends(session)) -> dict:
    """Forget the client's current prompts."""
    ws.clear(req.image, req.axis, req.slice, req.client)
    return {"image": req.image, "cleared": True}


@router.post("/commit")
def commit(req: CommitRequest, ws: Workspace = Depends(session)) -> dict:
    """The client's last answer's candidate becomes an object (saved)."""
    done = ws.commit(req.image, req.axis, req.slice, req.candidate, req.class_, req.client)
    return {**objects_reply(done.objects), "committed": done.record}


@router.post("/everything")
def everything(req: View, ws: Workspace = Depends(session)) -> dict:
    """Everything-mode proposals for the view."""
    return proposals_reply(ws.everything(req.image, req.axis, req.slice, req.client))


@router.post("/proposals/accept")
def accept(req: ProposalRequest, ws: Workspace = Depends(session)) -> dict:
    """Commit everything-mode proposals (all when ``indices`` is null)."""
    done = ws.accept(req.image, req.axis, req.slice, req.indices, req.class_, req.client)
    return {**objects_reply(done.objects), "accepted": done.accepted}


@router.post("/proposals/reject")
def reject(req: ProposalRequest, ws: Workspace = Depends(session)) -> dict:
    """Drop everything-mode proposals (all when ``indices`` is null)."""
    return {"image": req.image, "left": ws.reject(req.image, req.axis, req.slice, req.indices, req.client)}
