"""The annotation server's HTTP API (FastAPI; interactive docs at /docs). Every /api call needs the
session token, as ``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (unless started with --no-token).

Images are addressed by id (from /api/info), a view by (image, axis, slice): 2D images have slice null.
Coordinates are image pixels: boxes [x0, y0, x1, y1], points [x, y, label] (label 1 positive, 0 negative).

- ``GET /api/info`` -> model (name, checkpoint sha256), prompt kinds, classes, images
  ``[{"id", "name", "kind": "image"|"volume", "shape"}]``, the image the person was on.
- ``GET /api/image/{id}?contrast=auto|minmax|high|soft`` -> the view as an 8-bit PNG.
- ``POST /api/open`` ``{"image", "slice", "axis", "wait"}`` -> embeds the view (``wait`` false: in the
  background, for the next image) -> ``{"ready", "seconds"}``.
- ``POST /api/predict`` ``{"image", "slice": null, "axis": 0, "box": [x0,y0,x1,y1] | null,
  "points": [[x, y, 1|0], ...], "multimask": bool}`` -> ``{"masks": [base64 PNG, full resolution, one per
  candidate], "iou": [...], "best", "mask_prompted", "mask_from", "seconds"}`` (+ ``class_suggestion``
  with a class head).
  A prompt that adds one click to the previous one gets the previous low-res logits as mask prompt (of the
  candidate ``"mask_from": k`` when given, else of the best predicted IoU).
- ``POST /api/clear`` ``{"image", "slice", "axis"}``: forget the current prompts (Esc).
- ``POST /api/commit`` ``{"image", "slice", "axis", "candidate": int | null, "class": str | null}``: the last
  answer's candidate becomes an object -> the object list (every change is saved at once).
- ``GET /api/objects/{id}`` -> objects; ``GET /api/labels/{id}?format=png|rgba`` -> the uint16 instance PNG
  (``rgba``: ids packed as R + 256 G, for the page).
- ``POST /api/objects/update`` ``{"image", "object", "class", "hidden"}``; ``POST /api/objects/delete``
  ``{"image", "object"}``; ``POST /api/undo`` / ``POST /api/redo`` ``{"image"}``.
- ``POST /api/everything`` ``{"image", "slice", "axis"}`` -> proposals ``[{"index", "box", "mask" (PNG of the
  box crop), "iou", "stability"}]``; ``POST /api/proposals/accept`` ``{"image", "indices": [..] | null,
  "class"}``; ``POST /api/proposals/reject`` ``{"image", "indices"}``.

Errors are one line of JSON ``{"error": "..."}``: 400 bad input (malformed JSON, box outside the image,
slice out of range, points without a box on a box-only model), 401 missing/wrong token, 404 unknown image,
object or path. There is no upload endpoint and nothing is written outside --out.

Learning while annotating (``/api/learn...``: state, start, stop, auto, versions, revert) is documented in
``annotate.learn_routes``.
"""

from __future__ import annotations

import asyncio
import secrets
from importlib import resources
from typing import Annotated

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from medsamkit.annotate.learn_routes import install_learning
from medsamkit.annotate.storage import png_bytes
from medsamkit.annotate.volume_routes import register_volume_routes
from medsamkit.annotate.workspace import Workspace, display_pixels, label_rgba
from medsamkit.core.errors import InputError

STATIC = resources.files("medsamkit.annotate") / "static"
STATIC_FILES = {"annotate.js": "text/javascript", "view.js": "text/javascript", "annotate.css": "text/css",
                "volume.js": "text/javascript", "learn.js": "text/javascript"}


class View(BaseModel):
    """A view of an image: 2D images have slice null and axis 0."""

    image: str
    slice: int | None = None
    axis: int = 0


class OpenRequest(View):
    """Embed a view; ``wait`` false returns at once (the next image, in the background)."""

    wait: bool = True


class PredictRequest(View):
    """A box and/or clicks [x, y, 1|0] on a view; ``mask_from``: the previous candidate to refine."""

    box: list[float] | None = Field(default=None, min_length=4, max_length=4)
    points: list[Annotated[list[float], Field(min_length=3, max_length=3)]] = Field(default_factory=list,
                                                                                    max_length=200)
    multimask: bool = False
    mask_from: int | None = None


class CommitRequest(View):
    """Commit a candidate of the last answer (default: the best) with a class."""

    candidate: int | None = None
    class_: str | None = Field(default=None, alias="class")


class ObjectRequest(BaseModel):
    """One object of an image."""

    image: str
    object: int


class UpdateRequest(ObjectRequest):
    """New class and/or hidden flag of an object."""

    class_: str | None = Field(default=None, alias="class")
    hidden: bool | None = None


class ImageRequest(BaseModel):
    """An image by id."""

    image: str


class ProposalRequest(View):
    """Everything-mode proposals by index (null: all that are left)."""

    indices: list[int] | None = None
    class_: str | None = Field(default=None, alias="class")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())[:300]}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return "malformed JSON body"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where or 'request'}: {first.get('msg', 'invalid')}"


def _install_guards(app: FastAPI, token: str | None) -> None:
    """Token check on /api, and every error as one line of JSON (never a traceback)."""

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if token is not None and request.url.path.startswith("/api"):
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
            if not secrets.compare_digest(given.encode(), token.encode()):
                return _error(401, "missing or wrong token: open the URL the server printed")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return _error(400, _validation_message(exc))

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError):
        return _error(400, str(exc))

    @app.exception_handler(KeyError)
    async def not_found(request: Request, exc: KeyError):
        return _error(404, f"not found: {exc.args[0] if exc.args else ''}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, exc.detail)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        return _error(500, f"internal error ({type(exc).__name__}); see the server's log")


def _page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC_FILES:  # a fixed list: no path from the client reaches the file system
            raise KeyError(name)
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])


def _read_routes(app: FastAPI, ws: Workspace) -> None:
    @app.get("/api/info")
    def info() -> dict:
        """Model, prompt kinds, classes and the image list."""
        return ws.info()

    @app.get("/api/image/{image}")
    def image(image: str, slice: int | None = None, axis: int = 0, contrast: str = "auto") -> Response:
        """The view as an 8-bit PNG (contrast preset applied)."""
        _, pixels = ws.view(image, axis, slice)
        return Response(png_bytes(display_pixels(pixels, contrast)), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/objects/{image}")
    def objects(image: str) -> dict:
        """The image's objects and whether undo/redo are possible."""
        return ws.objects(image)

    @app.get("/api/labels/{image}")
    def labels(image: str, format: str = "png") -> Response:
        """The saved instance label map: uint16 PNG, or ``format=rgba`` (id = R + 256 G) for the page."""
        label = ws.state(image).label
        if format not in ("png", "rgba"):
            raise InputError(f"format must be png or rgba, got {format!r}")
        data = png_bytes(label if format == "png" else label_rgba(label))
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


def _model_routes(app: FastAPI, ws: Workspace) -> None:
    @app.post("/api/open")
    async def open_view(req: OpenRequest) -> dict:
        """Embed a view; without ``wait`` the embedding runs in the background (the next image)."""
        result = ws.open(req.image, req.axis, req.slice, wait=False)
        if req.wait and not result["ready"]:
            await asyncio.wrap_future(ws.segmenter.embedding(*ws.view(req.image, req.axis, req.slice)))
            result = ws.open(req.image, req.axis, req.slice, wait=True)
        return result

    @app.post("/api/predict")
    def predict(req: PredictRequest) -> dict:
        """Candidate masks for a box and/or clicks."""
        return ws.predict(req.image, req.axis, req.slice, req.box, req.points, req.multimask, req.mask_from)

    @app.post("/api/clear")
    def clear(req: View) -> dict:
        """Forget the current prompts."""
        return ws.clear(req.image, req.axis, req.slice)

    @app.post("/api/everything")
    def everything(req: View) -> dict:
        """Everything-mode proposals for the view."""
        return ws.everything(req.image, req.axis, req.slice)


def _change_routes(app: FastAPI, ws: Workspace) -> None:
    @app.post("/api/commit")
    def commit(req: CommitRequest) -> dict:
        """The last answer's candidate becomes an object (saved)."""
        return ws.commit(req.image, req.axis, req.slice, req.candidate, req.class_)

    @app.post("/api/objects/update")
    def update(req: UpdateRequest) -> dict:
        """Rename an object's class or hide/show it."""
        return ws.update(req.image, req.object, req.class_, req.hidden)

    @app.post("/api/objects/delete")
    def delete(req: ObjectRequest) -> dict:
        """Delete an object."""
        return ws.delete(req.image, req.object)

    @app.post("/api/undo")
    def undo(req: ImageRequest = Body(...)) -> dict:
        """Undo the image's last change."""
        return ws.undo(req.image)

    @app.post("/api/redo")
    def redo(req: ImageRequest = Body(...)) -> dict:
        """Redo the image's last undone change."""
        return ws.redo(req.image)

    @app.post("/api/proposals/accept")
    def accept(req: ProposalRequest) -> dict:
        """Commit everything-mode proposals (all when ``indices`` is null)."""
        return ws.accept(req.image, req.axis, req.slice, req.indices, req.class_)

    @app.post("/api/proposals/reject")
    def reject(req: ProposalRequest) -> dict:
        """Drop everything-mode proposals (all when ``indices`` is null)."""
        return ws.reject(req.image, req.axis, req.slice, req.indices)


def create_app(workspace: Workspace, token: str | None) -> FastAPI:
    """The FastAPI app of a session (``token`` None: no token needed, --no-token)."""
    app = FastAPI(title="medsamkit annotate", description=__doc__, version="1")
    _install_guards(app, token)
    _page_routes(app)
    _read_routes(app, workspace)
    _model_routes(app, workspace)
    _change_routes(app, workspace)
    register_volume_routes(app, workspace)  # volumes: geometry, windows, propagation (annotate.volume_routes)
    install_learning(app, workspace)  # app.state.learning; its API: annotate.learn_routes
    app.state.workspace = workspace
    return app
