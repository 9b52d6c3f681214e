"""Stable integer keys and seeded generators: the same names give the same random draws on every machine."""

from __future__ import annotations

import zlib

import numpy as np

from medsamkit.core.errors import InputError


def name_key(text: str) -> int:
    """A stable non-negative 31-bit key of a name (crc32): case names, prompt-mode names, sources."""
    return zlib.crc32(str(text).encode()) & 0x7FFFFFFF


def object_rng(seed: int, *keys: int) -> np.random.Generator:
    """The generator for one object: ``default_rng([seed, *keys])``, e.g. keys = (case key, object label)."""
    entropy = [int(seed), *(int(k) for k in keys)]
    if any(v < 0 for v in entropy):
        raise InputError(f"seed and keys must be non-negative integers, got {entropy}")
    return np.random.default_rng(entropy)
