"""The annotation server's HTTP API (FastAPI; the routes listed at /docs, the schema at /openapi.json). Every
/api call needs the session token, as ``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (unless started with
--no-token), and a Host header naming this server (loopback, or the --host it was started on).

Images are addressed by id (from /api/info), a view by (image, axis, slice): 2D images have slice null.
Coordinates are image pixels: boxes [x0, y0, x1, y1], points [x, y, label] (label 1 positive, 0 negative).
``client`` (letters, digits, - and _; the page makes one per tab) names whose prompts a request continues:
each client has its own prompt session per view, and commits only its own answer.

- ``GET /api/info`` -> model (name, checkpoint sha256), prompt kinds, classes, images
  ``[{"id", "name", "kind": "image"|"volume", "shape"}]``, the image the person was on.
- ``GET /api/image/{id}?contrast=auto|minmax|high|soft`` -> the view as an 8-bit PNG.
- ``POST /api/open`` ``{"image", "slice", "axis", "wait"}`` -> embeds the view (``wait`` false: in the
  background, for the next image) -> ``{"ready", "seconds"}``.
- ``POST /api/predict`` ``{"image", "slice": null, "axis": 0, "client", "box": [x0,y0,x1,y1] | null,
  "points": [[x, y, 1|0], ...], "multimask": bool}`` -> ``{"masks": [base64 PNG, full resolution, one per
  candidate], "iou": [...], "best", "mask_prompted", "mask_from", "seconds"}`` (+ ``class_suggestion``
  with a class head).
  A prompt that adds one click to the client's previous one gets the previous low-res logits as mask prompt
  (of the candidate ``"mask_from": k`` when given, else of the best predicted IoU).
- ``POST /api/clear`` ``{"image", "slice", "axis", "client"}``: forget the client's current prompts (Esc).
- ``POST /api/commit`` ``{"image", "slice", "axis", "client", "candidate": int | null, "class": str | null}``:
  the client's last answer's candidate becomes an object -> the object list (every change is saved at once).
- ``GET /api/objects/{id}`` -> objects; ``GET /api/labels/{id}?format=png|rgba`` -> the uint16 instance PNG
  (``rgba``: ids packed as R + 256 G, for the page).
- ``POST /api/objects/update`` ``{"image", "object", "class", "hidden"}``; ``POST /api/objects/delete``
  ``{"image", "object"}``; ``POST /api/undo`` / ``POST /api/redo`` ``{"image"}``.
- ``POST /api/everything`` ``{"image", "slice", "axis", "client"}`` -> proposals ``[{"index", "box", "mask" (PNG
  of the box crop), "iou", "stability"}]``; ``POST /api/proposals/accept`` ``{"image", "client", "indices":
  [..] | null, "class"}``; ``POST /api/proposals/reject`` ``{"image", "client", "indices"}``.

Errors are one line of JSON ``{"error": "..."}``: 400 bad input (malformed JSON, box outside the image or not
a finite number, slice out of range, an id or class name that is
not short printable text, a Host that is not this server), 401 missing/wrong token, 404 unknown image, object
or path, 413 a body over 64 kB. There is no upload endpoint and nothing is written outside --out.

With --monailabel, MONAI Label's API for 3D Slicer / OHIF / QuPath: ``annotate.http.monailabel``.

Volumes (``/api/volume...``, ``/api/correct``, ``/api/propagate``): ``annotate.http.volumes``; learning while
annotating (``/api/learn...``): ``annotate.http.learn``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from medsamkit.annotate.http import items, learn, monailabel, objects, page, prompts, volumes
from medsamkit.annotate.http.guards import MONAILABEL, allowed_hosts, install_guards
from medsamkit.annotate.session.workspace import Workspace


def monailabel_path(token: str | None) -> str:
    """Where the MONAI Label-compatible API lives: /monailabel/TOKEN (/monailabel with --no-token)."""
    return f"{MONAILABEL}/{token}" if token else MONAILABEL


def create_app(workspace: Workspace, token: str | None) -> FastAPI:
    """The FastAPI app of a session (``token`` None: no token needed, --no-token). Starting it starts the
    session's learn rounds; stopping it stops them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.learning = workspace.start_learning()
        try:
            yield
        finally:
            app.state.learning.close()

    app = FastAPI(title="medsamkit annotate", description=__doc__, version="1", docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    install_guards(app, token, allowed_hosts(workspace.cfg.host))
    for module in (page, items, prompts, objects, volumes, learn):
        app.include_router(module.router)
    if workspace.cfg.monailabel:
        app.include_router(monailabel.router, prefix=monailabel_path(token))
    app.state.workspace = workspace
    return app
