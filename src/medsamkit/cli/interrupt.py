"""Ctrl-C on a long verb: the engines keep finished work on disk, so say how to resume and exit 130."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

T = TypeVar("T")


def run_resumable(run: Callable[[object], T], cfg: object, resume_hint: str) -> T:
    """``run(cfg)``; on KeyboardInterrupt print "interrupted: <resume_hint>" to stderr and exit with 130."""
    try:
        return run(cfg)
    except KeyboardInterrupt:
        click.echo(f"interrupted: {resume_hint}", err=True)
        sys.exit(130)
