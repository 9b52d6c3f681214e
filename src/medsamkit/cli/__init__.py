"""The `medsamkit` command line: one thin module per verb; each parses flags, fills a config, calls a workflow."""

from __future__ import annotations

from medsamkit.cli import (  # noqa: F401  (each verb module adds itself to `main`)
    annotate,
    catalog,
    demo,
    embed,
    evaluate,
    export,
    finetune,
    samaug,
    segment,
    unet,
    volume,
)
from medsamkit.cli.group import main

__all__ = ["main"]
