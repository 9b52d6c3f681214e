"""The learn API (same token and one-line JSON errors as the rest; rounds: ``annotate.model.learning``):

- ``GET /api/learn`` -> ``{"phase": "waiting"|"ready"|"training"|"updated"|"kept"|"failed", "auto", "objects",
  "images", "min_objects", "min_images", "budget", "current", "model", "job": {"number", "phase", "progress",
  "steps", "seconds", "before", "after" (validation Dice per prompt mode), "accepted", "reason", "version",
  "error"} | null}``
- ``POST /api/learn/start`` (400 while a round runs or with objects on fewer than 2 images),
  ``POST /api/learn/stop``, ``POST /api/learn/auto`` ``{"on": bool}`` -> the same state.
- ``GET /api/learn/versions`` -> ``{"current", "versions": [{"version", "model", "checkpoint_sha256", "file",
  "parent", "before", "after", "trained_on": {image: [object ids]}, ...}]}``;
  ``POST /api/learn/revert`` ``{"version": N}`` -> the state (404 for an unknown version).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from medsamkit.annotate.http.requests import AutoRequest, RevertRequest, session
from medsamkit.annotate.session.workspace import Workspace

router = APIRouter(prefix="/api/learn")


def learning(ws: Workspace = Depends(session)):
    """The session's learn rounds (started with the app)."""
    if ws.learning is None:
        raise KeyError("learning (the app was not started)")
    return ws.learning


@router.get("")
def learn_state(rounds=Depends(learning)) -> dict:
    """Phase, counts, the round's progress and validation, versions."""
    return rounds.status()


@router.post("/start")
def learn_start(rounds=Depends(learning)) -> dict:
    """Start a round now."""
    return rounds.start()


@router.post("/stop")
def learn_stop(rounds=Depends(learning)) -> dict:
    """Stop the running round (the model stays as it is)."""
    return rounds.stop()


@router.post("/auto")
def learn_auto(req: AutoRequest, rounds=Depends(learning)) -> dict:
    """Switch automatic rounds on or off."""
    return rounds.set_auto(req.on)


@router.get("/versions")
def learn_versions(rounds=Depends(learning)) -> dict:
    """Every model version, the current one marked."""
    return rounds.versions.listing()


@router.post("/revert")
def learn_revert(req: RevertRequest, rounds=Depends(learning)) -> dict:
    """Serve an earlier (or any existing) version from now on."""
    return rounds.revert(req.version)
