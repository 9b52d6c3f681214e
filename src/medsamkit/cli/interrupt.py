"""Ctrl-C on a long verb: the engines keep finished work on disk, so say how to resume and exit 130."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
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


def run_batch(local: Callable[[object], T], cfg: object, resume_hint: str, dask: object | None = None,
              cluster: Callable[[], Callable[..., T]] | None = None) -> T:
    """A resumable batch verb: ``local(cfg)``, or with a DaskConfig ``cluster()(cfg, dask=dask)`` (``cluster``
    imports the distributed runner, so Dask is only imported when asked for)."""
    run = local if dask is None else partial(cluster(), dask=dask)
    return run_resumable(run, cfg, resume_hint)


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
