"""What the session's operations return: plain domain objects (arrays, records, answers), never HTTP replies;
``annotate.http.encoders`` turns them into JSON and PNGs."""

from __future__ import annotations

from dataclasses import dataclass

from medsamkit.annotate.model.answers import Answer
from medsamkit.annotate.model.engine3d import EngineRun
from medsamkit.annotate.model.propagation import PropagationRun
from medsamkit.samaug.everything import MaskRecord


@dataclass
class SessionInfo:
    """The model (identity, prompt kinds), the classes, the items and where the person was."""

    model: dict
    point_prompts: bool  # the decoder reads points natively
    clicks: str  # how clicks are answered: native or search (prompts.clicks)
    class_head: bool
    classes: list[str]
    items: list[dict]
    current: str
    out: str


@dataclass
class ObjectList:
    """An item's objects (records in id order) and whether undo / redo are possible."""

    image: str
    objects: list[dict]
    can_undo: bool
    can_redo: bool


@dataclass
class Opened:
    """Whether a view's embedding is ready, and how long the call took."""

    image: str
    ready: bool
    seconds: float


@dataclass
class ClassSuggestion:
    """The class head's most likely class for a prompt, and every class's probability."""

    name: str
    probability: float
    probabilities: dict[str, float]


@dataclass
class Predicted:
    """The answer to a prompt in full-image coordinates, the seconds it took, the class head's suggestion."""

    answer: Answer
    seconds: float
    suggestion: ClassSuggestion | None


@dataclass
class Changed:
    """The objects after a change, and what the change did: the new object's record (commit), the kind of
    change undone or redone, the ids of accepted proposals, the view corrected."""

    objects: ObjectList
    record: dict | None = None
    step: str | None = None
    accepted: list[int] | None = None
    view: tuple[int, int, int] | None = None  # (object, axis, slice) of a correction


@dataclass
class Proposals:
    """Everything-mode proposals of a view, by index, and the seconds they took."""

    image: str
    records: list[MaskRecord]
    seconds: float


@dataclass
class Propagated:
    """The objects after a propagation run, the object, where it started and what the run found."""

    objects: ObjectList
    object_id: int
    axis: int
    start: int
    run: PropagationRun


@dataclass
class Engined:
    """The objects after a 3D-engine step (a 3D box or a click), the object, its axis and what the step did."""

    objects: ObjectList
    object_id: int
    axis: int
    run: EngineRun
