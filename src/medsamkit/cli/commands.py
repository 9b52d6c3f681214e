"""Imports every verb module so each registers itself on the `main` group."""

from medsamkit.cli import catalog, demo, embed, evaluate, export, finetune, samaug, segment, unet, volume  # noqa: F401
