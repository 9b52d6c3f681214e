"""The session's domain objects as the API's JSON and PNGs: masks as base64 PNGs, instance ids packed into
RGBA for the page, object lists, answers, proposals, propagation runs."""

from __future__ import annotations

import base64

import numpy as np
from fastapi.responses import Response

from medsamkit.annotate.session.results import (
    Engined,
    ObjectList,
    Opened,
    Predicted,
    Propagated,
    Proposals,
    SessionInfo,
)
from medsamkit.io.images import png_bytes


def b64png(array: np.ndarray) -> str:
    """base64 PNG (what the API returns for masks)."""
    return base64.b64encode(png_bytes(array)).decode("ascii")


def mask_b64(mask: np.ndarray) -> str:
    """A bool mask as a base64 8-bit PNG (255 inside)."""
    return b64png(mask.astype(np.uint8) * 255)


def label_rgba(label: np.ndarray) -> np.ndarray:
    """Instance ids packed into an opaque RGBA image (id = R + 256 G) the page decodes exactly."""
    out = np.empty(label.shape + (4,), dtype=np.uint8)
    out[..., 0] = label & 0xFF
    out[..., 1] = label >> 8
    out[..., 2] = 0
    out[..., 3] = 255
    return out


def png_response(array: np.ndarray, cache: str) -> Response:
    """A PNG response with a Cache-Control value."""
    return Response(png_bytes(array), media_type="image/png", headers={"Cache-Control": cache})


def info_reply(info: SessionInfo) -> dict:
    """``GET /api/info``."""
    return {"model": info.model, "prompts": ["box", "box+points", "points"], "point_prompts": info.point_prompts,
            "clicks": info.clicks,
            "class_head": info.class_head, "classes": info.classes, "images": info.items, "current": info.current,
            "out": info.out}


def objects_reply(objects: ObjectList) -> dict:
    """An item's objects and whether undo / redo are possible."""
    return {"image": objects.image, "objects": objects.objects, "can_undo": objects.can_undo,
            "can_redo": objects.can_redo}


def opened_reply(opened: Opened) -> dict:
    """``POST /api/open``."""
    return {"image": opened.image, "ready": opened.ready, "seconds": opened.seconds}


def predicted_reply(predicted: Predicted) -> dict:
    """``POST /api/predict``: candidates as full-resolution PNGs, their IoU, the best, the click feedback."""
    answer = predicted.answer
    reply = {"masks": [mask_b64(m) for m in answer.masks], "iou": [round(float(q), 4) for q in answer.iou],
             "best": answer.best(), "mask_prompted": answer.mask_prompted, "mask_from": answer.mask_from,
             "seconds": predicted.seconds}
    if predicted.suggestion is not None:
        s = predicted.suggestion
        reply["class_suggestion"] = {"class": s.name, "probability": s.probability,
                                     "probabilities": s.probabilities}
    return reply


def proposals_reply(proposals: Proposals) -> dict:
    """``POST /api/everything``: each proposal's box, mask (PNG of the box crop), IoU and stability."""
    rows = [{"index": i, "box": list(r.box), "mask": mask_b64(r.crop), "iou": round(r.predicted_iou, 4),
             "stability": round(r.stability_score, 4)} for i, r in enumerate(proposals.records)]
    return {"image": proposals.image, "proposals": rows, "seconds": proposals.seconds}


def propagated_reply(done: Propagated) -> dict:
    """``POST /api/propagate``: the objects, every view visited, the stops and the run's cost."""
    run = done.run
    return {**objects_reply(done.objects), "object": done.object_id, "axis": done.axis, "start": done.start,
            "visited": run.visited, "stops": run.stops, "seconds": round(run.seconds, 3), "encoded": run.encoded,
            "seconds_per_slice": round(run.seconds / max(len(run.visited), 1), 4)}


def engined_reply(done: Engined) -> dict:
    """``POST /api/box3d`` and ``POST /api/click3d``: the objects, the object, the views changed, the cost."""
    run = done.run
    return {**objects_reply(done.objects), "object": done.object_id, "axis": done.axis, "changed": sorted(run.masks),
            "trace": run.trace, "encoded": run.encoded, "seconds": round(run.seconds, 3)}
