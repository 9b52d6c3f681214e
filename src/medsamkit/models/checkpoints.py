"""Safe checkpoint loading: weights_only torch.load, sha256 verification, strict loading with a clear diff."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from medsamkit.core.errors import InputError


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a state dict with `weights_only=True` (optionally sha256-checked); unwraps {"model": ...}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    if expected_sha256 is not None:
        got = sha256_of(path)
        if got != expected_sha256:
            raise InputError(f"{path}: checksum mismatch (sha256 {got[:12]}..., expected {expected_sha256[:12]}...)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: unreadable checkpoint ({first[:200]})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    return dict(obj)


def _short(keys: list[str], n: int = 3) -> str:
    more = f", +{len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """Load `state` into `module` with strict key and shape checking; one-line InputError on mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_short(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_short(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (checkpoint vs model: {_short(shapes, 2)})")
        raise InputError(f"{source}: checkpoint does not fit {what}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
