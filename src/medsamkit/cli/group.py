"""The `medsamkit` click group: process setup once per command, InputError as one line and exit code 2."""

from __future__ import annotations

import sys

import click

from medsamkit import __version__
from medsamkit.core.errors import InputError
from medsamkit.core.runtime import setup


class _Group(click.Group):
    """Sets threads and the allocator (an entry point's job), turns InputError into one line on stderr."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            if ctx.protected_args or ctx.args:
                setup()
            return super().invoke(ctx)
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="medsamkit")
def main() -> None:
    """medsamkit: Segment-Anything-family models on medical images."""
