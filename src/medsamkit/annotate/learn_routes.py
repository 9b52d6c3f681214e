"""The learn API of the annotation server (same token and one-line JSON errors as the rest):

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

from fastapi import FastAPI
from pydantic import BaseModel

from medsamkit.annotate.learning import LearnController, LearnSettings


class AutoRequest(BaseModel):
    """Switch automatic learn rounds on or off."""

    on: bool


class RevertRequest(BaseModel):
    """The version to serve from now on."""

    version: int


def install_learning(app: FastAPI, workspace) -> LearnController:
    """Create the session's learn controller (``app.state.learning``) and its routes."""
    cfg = workspace.cfg
    settings = LearnSettings(auto=bool(getattr(cfg, "learn", False)),
                             min_objects=int(getattr(cfg, "learn_min_objects", 20)),
                             budget=float(getattr(cfg, "learn_budget", 180.0)))
    learning = LearnController(workspace, settings)
    app.state.learning = learning

    @app.get("/api/learn")
    def learn_state() -> dict:
        return learning.status()

    @app.post("/api/learn/start")
    def learn_start() -> dict:
        return learning.start()

    @app.post("/api/learn/stop")
    def learn_stop() -> dict:
        return learning.stop()

    @app.post("/api/learn/auto")
    def learn_auto(req: AutoRequest) -> dict:
        return learning.set_auto(req.on)

    @app.get("/api/learn/versions")
    def learn_versions() -> dict:
        return learning.versions.listing()

    @app.post("/api/learn/revert")
    def learn_revert(req: RevertRequest) -> dict:
        return learning.revert(req.version)

    return learning
