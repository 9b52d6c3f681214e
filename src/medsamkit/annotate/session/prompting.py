"""Prompt sessions: the object a client is making on one view. They belong to a client (an id the page makes
per tab; clients that send none share one), so two people, or two tabs, prompting the same image each commit
their own answer, never the other's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from medsamkit.annotate.model.answers import Answer, AnswerMemory, ViewKey
from medsamkit.core.objects import Window
from medsamkit.prompts.simulate import Prompt

T = TypeVar("T")
ANONYMOUS = ""  # the client of requests that name none


@dataclass
class PromptSession:
    """The prompts of the object being made on one view: when it started, how many clicks, the last answer
    (in full-image coordinates) and the model view it was answered on (``annotate.session.views``)."""

    started: float
    clicks: int = 0
    answer: Answer | None = None
    window: Window | None = None  # the model's view of this object, kept for its follow-up clicks
    box: tuple | None = None  # the box the view was chosen for: a new box chooses again
    view_answer: Answer | None = None  # the answer in the view's coordinates (what the model saw)
    memory: AnswerMemory = field(default_factory=AnswerMemory)  # click semantics (annotate.model.answers)

    def kept_window(self, prompt: Prompt) -> Window | None:
        """The object's view while its box is unchanged (None: a new box chooses its view again)."""
        box = None if prompt.box is None else tuple(prompt.box.tolist())
        return self.window if self.window is not None and self.box == box else None


class ClientViews(Generic[T]):
    """Something per (client, view), the least recently used dropped beyond ``keep``; its lock is held for a
    table operation only, never while the model answers."""

    def __init__(self, keep: int = 16) -> None:
        self._items: OrderedDict[tuple[str, ViewKey], T] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def get(self, client: str, key: ViewKey) -> T | None:
        """The client's entry for a view (None when it has none)."""
        with self._lock:
            found = self._items.get((client, key))
            if found is not None:
                self._items.move_to_end((client, key))
            return found

    def put(self, client: str, key: ViewKey, value: T) -> None:
        """Set the client's entry for a view."""
        with self._lock:
            self._items[(client, key)] = value
            self._items.move_to_end((client, key))
            while len(self._items) > self._keep:
                self._items.popitem(last=False)

    def pop(self, client: str, key: ViewKey) -> T | None:
        """Remove and return the client's entry for a view."""
        with self._lock:
            return self._items.pop((client, key), None)
