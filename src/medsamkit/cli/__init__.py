"""The `medsamkit` command line: one thin module per verb; each parses flags and calls an engine."""

from __future__ import annotations

import sys

import click

from medsamkit import __version__
from medsamkit.core.errors import InputError


class _Group(click.Group):
    """Turns InputError into one line on stderr and exit code 2 (never a deep traceback)."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="medsamkit")
def main() -> None:
    """medsamkit: Segment-Anything-family models on medical images."""


def _register() -> None:
    from medsamkit.cli import commands  # noqa: F401  (each verb module adds itself to `main`)


_register()
