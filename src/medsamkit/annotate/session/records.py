"""What each object's record says about how it was made, built in one place: a person's mask (a commit or a
view's correction), an accepted everything-mode proposal, a propagation run."""

from __future__ import annotations

import time

from medsamkit.annotate.model.answers import Answer
from medsamkit.annotate.model.engine3d import EngineRun
from medsamkit.annotate.model.propagation import PropagationRun, PropagationSettings
from medsamkit.annotate.session.prompting import PromptSession
from medsamkit.io.annotations import now
from medsamkit.samaug.everything import MaskRecord


def answer_record(session: PromptSession, answer: Answer, candidate: int, identity: dict) -> dict:
    """A mask a person made with prompts: the prompt, the candidate taken, its predicted IoU, the model that
    answered, the clicks and seconds it took, when."""
    return {"prompt": answer.prompt.as_dict(), "candidate": candidate,
            "predicted_iou": round(float(answer.iou[candidate]), 4), **identity,
            "seconds": round(time.time() - session.started, 2), "clicks": session.clicks, "created": now()}


def proposal_record(proposal: MaskRecord, identity: dict) -> dict:
    """An everything-mode proposal a person accepted (no prompt, no clicks)."""
    return {"prompt": None, "source": "everything", "predicted_iou": round(proposal.predicted_iou, 4), **identity,
            "seconds": 0.0, "clicks": 0, "created": now()}


def run_record(axis: int, start: int, settings: PropagationSettings, run: PropagationRun, identity: dict) -> dict:
    """A propagation run: where it started, its settings, where and why it stopped, its cost, the model."""
    return {"axis": axis, "start": start, "direction": settings.direction, "min_iou": float(settings.min_iou),
            "min_area": int(settings.min_area), "margin": float(settings.margin), "stops": run.stops,
            "slices": len(run.visited), "encoded": run.encoded, "seconds": round(run.seconds, 3), **identity,
            "created": now()}


def engine_record(kind: str, axis: int, run: EngineRun, identity: dict, **where) -> dict:
    """A 3D-engine step (``kind`` "box3d" or "click"): where, the views it changed, its cost, the model."""
    return {"kind": kind, "axis": axis, **where, "changed": sorted(run.masks), "encoded": run.encoded,
            "seconds": round(run.seconds, 3), **identity, "created": now()}
