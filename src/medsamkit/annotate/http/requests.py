"""The API's request bodies and path values, checked at the boundary: ids and class names are short, printable
text (no NUL or other control characters, no lone surrogates), coordinates are finite numbers, lists are
bounded. Anything else is a 400 with one line before the session sees it. ``session`` is the dependency every
router takes the ``Workspace`` from."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request
from pydantic import AfterValidator, BaseModel, Field

from medsamkit.annotate.session.workspace import Workspace

MAX_TEXT = 256  # characters of an id or class name (a file name's length)
MAX_POINTS = 200
MAX_INDICES = 10_000


def _printable(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("text must not hold control characters (NUL, newline, ...)")
    return value


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_printable)]
PathId = Annotated[str, Path(max_length=MAX_TEXT), AfterValidator(_printable)]
ClientId = Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")]
Coordinate = Annotated[float, Field(allow_inf_nan=False)]


def session(request: Request) -> Workspace:
    """The app's session (``create_app`` puts it on ``app.state``)."""
    return request.app.state.workspace


class View(BaseModel):
    """A view of an image: 2D images have slice null and axis 0; ``client``: the page's id (one per tab)."""

    image: Text
    slice: int | None = None
    axis: int = 0
    client: ClientId = ""


class OpenRequest(View):
    """Embed a view; ``wait`` false returns at once (the next image, in the background)."""

    wait: bool = True


class PredictRequest(View):
    """A box and/or clicks [x, y, 1|0] on a view; ``mask_from``: the previous candidate to refine."""

    box: list[Coordinate] | None = Field(default=None, min_length=4, max_length=4)
    points: list[Annotated[list[Coordinate], Field(min_length=3, max_length=3)]] = Field(
        default_factory=list, max_length=MAX_POINTS)
    multimask: bool = False
    mask_from: int | None = None


class CommitRequest(View):
    """Commit a candidate of the client's last answer (default: the best) with a class."""

    candidate: int | None = None
    class_: Text | None = Field(default=None, alias="class")


class ObjectRequest(BaseModel):
    """One object of an image."""

    image: Text
    object: int


class UpdateRequest(ObjectRequest):
    """New class and/or hidden flag of an object."""

    class_: Text | None = Field(default=None, alias="class")
    hidden: bool | None = None


class ImageRequest(BaseModel):
    """An image by id."""

    image: Text


class ProposalRequest(View):
    """Everything-mode proposals by index (null: all that are left)."""

    indices: list[int] | None = Field(default=None, max_length=MAX_INDICES)
    class_: Text | None = Field(default=None, alias="class")


class CorrectRequest(View):
    """Replace an object's pixels on one view by the client's last answer there."""

    slice: int
    object: int
    candidate: int | None = None


class PropagateRequest(BaseModel):
    """Propagate an object from its mask on one view."""

    image: Text
    object: int
    axis: int = 0
    slice: int
    direction: str = Field(default="both", max_length=16)
    min_iou: float = Field(default=0.0, ge=0.0, le=1.0)
    min_area: int = Field(default=20, ge=0)
    margin: float = Field(default=0.0, ge=0.0, le=64.0)


class Box3DRequest(BaseModel):
    """A new object from a 3D box: views z_min..z_max of ``axis`` and a 2D box (x0, y0, x1, y1) on view z."""

    image: Text
    axis: int = 0
    box3d: list[Coordinate] = Field(min_length=7, max_length=7)
    class_: Text | None = Field(default=None, alias="class")
    client: ClientId = ""


class Click3DRequest(View):
    """A click (x, y) on one view of an object, positive or negative, for the 3D engine."""

    slice: int
    object: int
    x: Coordinate
    y: Coordinate
    positive: bool = True


class AutoRequest(BaseModel):
    """Switch automatic learn rounds on or off."""

    on: bool


class RevertRequest(BaseModel):
    """The version to serve from now on."""

    version: int
