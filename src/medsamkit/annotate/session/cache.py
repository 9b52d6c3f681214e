"""The few decoded images or volumes a session keeps in memory (a CT is ~100-400 MB as float32)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class DecodedCache:
    """Decoded items by id, the least recently used dropped first; its lock is held while one is read, so
    two requests never decode the same item twice."""

    def __init__(self, keep: int) -> None:
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        """The kept item, or ``load()`` it."""
        with self._lock:
            if key not in self._items:
                self._items[key] = load()
                while len(self._items) > self._keep:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            return self._items[key]
