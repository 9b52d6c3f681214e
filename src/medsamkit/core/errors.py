"""The one error type users see: a clear, one-line message naming the file and the problem."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (file, image, prompt, checkpoint, dataset); the CLI prints it as one line."""


def where(source: object | None) -> str:
    """Prefix for messages: ``"path: "`` when a source is known, else empty."""
    return f"{source}: " if source not in (None, "") else ""
