"""Ctrl-C on a long verb: the engines keep finished work on disk, so say how to resume and exit 130."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import click

from medsamkit.cli.options import executor_of

T = TypeVar("T")


def run_resumable(run: Callable[[object], T], cfg: object, resume_hint: str) -> T:
    """``run(cfg)``; on KeyboardInterrupt print "interrupted: <resume_hint>" to stderr and exit with 130."""
    try:
        return run(cfg)
    except KeyboardInterrupt:
        click.echo(f"interrupted: {resume_hint}", err=True)
        sys.exit(130)


def run_batch(run: Callable[..., T], cfg: object, params: dict, resume_hint: str) -> T:
    """A batch verb: ``run(cfg, executor=...)`` in this process, or on Dask when the command's --workers /
    --scheduler ask for it; Ctrl-C as in `run_resumable`."""
    return run_resumable(partial(run, executor=executor_of(params)), cfg, resume_hint)


def print_report(out: str, line: str, summary: dict) -> None:
    """A finished batch run: OUT/summary.md, one closing line, then the cases that failed (exit 2 if any)."""
    click.echo(open(f"{out}/summary.md").read())
    click.echo(line)
    report_failures(summary)


def report_failures(summary: dict) -> None:
    """One line per case that failed on the cluster (bad input), then exit code 2 when there was any."""
    for line in summary.get("failed", []):
        click.echo(f"error: {line}", err=True)
    if summary.get("failed"):
        sys.exit(2)
