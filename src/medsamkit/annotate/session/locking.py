"""The session lock's one rule for methods: a method that changes annotations runs under it."""

from __future__ import annotations

import functools


def serialised(method):
    """Run a method that changes annotations under the session lock (requests arrive on several threads)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return locked
