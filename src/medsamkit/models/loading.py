"""Loading models by name: a registry model with its weights, or a fine-tuning run applied to its base model.

The only place that turns a ``--model`` / ``--checkpoint`` pair into a ready model; resumable runs also ask it
for the fine-tuned file's sha256 (``model_fingerprint``) so results of an older best.pt are never mixed in.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from medsamkit.core.errors import InputError
from medsamkit.models.checkpoints import load_strict, read_state_dict, sha256_of
from medsamkit.models.finetuned import apply_finetuned, read_run_checkpoint, run_checkpoint_file
from medsamkit.models.registry import get_spec, names_finetuned
from medsamkit.models.sam import SamFamilyModel


def load_registry_model(name: str, checkpoint: str | Path | None = None) -> SamFamilyModel:
    """Build a registry model and load its weights strictly (bundled and sha256-checked, or the user's file)."""
    spec = get_spec(name)
    if checkpoint is None:
        if spec.bundled is None:
            raise InputError(f"{name}: weights are not bundled; pass --checkpoint PATH to {spec.source}")
        checkpoint, sha = spec.bundled(), spec.sha256
    else:
        sha = None
    state = read_state_dict(checkpoint, expected_sha256=sha)
    model = spec.build(point_prompts=spec.point_prompts)
    load_strict(model, state, str(checkpoint), name)
    return model


def _base_of(ckpt: dict) -> SamFamilyModel:
    """The base model a fine-tuning checkpoint was trained from, checked against the recorded sha256."""
    base, base_ckpt = ckpt["base_model"], ckpt.get("base_checkpoint") or None
    if base_ckpt is not None:
        if not Path(base_ckpt).is_file():
            raise InputError(f"{ckpt['path']}: base checkpoint {base_ckpt} not found")
        if sha256_of(base_ckpt) != ckpt["base_sha256"]:
            raise InputError(f"{ckpt['path']}: base checkpoint {base_ckpt} differs from the one fine-tuned")
    else:
        pinned = get_spec(base).sha256
        if pinned and ckpt.get("base_sha256") and pinned != ckpt["base_sha256"]:
            raise InputError(f"{ckpt['path']}: fine-tuned from other {base} weights (sha256 differs)")
    return load_registry_model(base, base_ckpt)


def load_finetuned(path: str | Path, device: str | torch.device | None = None) -> SamFamilyModel:
    """A fine-tuning run (a .pt file, or a run folder's best.pt) applied to its base model (eval mode)."""
    ckpt = read_run_checkpoint(path)
    model = apply_finetuned(_base_of(ckpt), ckpt)
    return model if device is None else model.to(device)


def load_model(
    name: str = "litemedsam",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
) -> SamFamilyModel:
    """A model by registry name (weights loaded strictly) or by fine-tuning checkpoint path, in eval mode."""
    model = load_finetuned(Path(name)) if names_finetuned(name) else load_registry_model(name, checkpoint)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def model_fingerprint(name: str) -> str | None:
    """sha256 of the fine-tuning checkpoint `name` names (a run folder means its best.pt); None for registry
    models. Resumable engines record it, so results of an earlier best.pt are never mixed with a newer one's."""
    if not names_finetuned(name):
        return None
    path = run_checkpoint_file(name)
    return sha256_of(path) if path.is_file() else None


def weights_identity(name: str, checkpoint: str | Path | None = None) -> dict:
    """Which weights a ``--model`` / ``--checkpoint`` pair names: the model and the sha256 of its weights (the
    fine-tuned file, the user's checkpoint, or the registry's pinned bundled file), as results record them."""
    if names_finetuned(name):
        return {"model": name, "checkpoint_sha256": model_fingerprint(name)}
    if checkpoint is None:
        return {"model": name, "checkpoint_sha256": get_spec(name).sha256}
    return {"model": name, "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_of(checkpoint)}


def base_model(name: str, checkpoint: str | Path | None = None) -> tuple[str, str | None, str | None]:
    """(registry base, its checkpoint, the fine-tuned weights file or None) a ``--model`` / ``--checkpoint`` pair
    stands for: what a new fine-tuning run starting from that model is given."""
    if names_finetuned(name):
        ckpt = read_run_checkpoint(name)
        return ckpt["base_model"], ckpt.get("base_checkpoint") or None, ckpt["path"]
    return name, None if checkpoint is None else str(checkpoint), None


def run_identity(cfg) -> dict:
    """A run's settings for the resume check, plus the sha256 of a fine-tuned model file (so a newer
    best.pt under the same path is a different run, not a continuation)."""
    config = {k: v for k, v in asdict(cfg).items() if k != "show_progress"}
    return {**config, "model_sha256": model_fingerprint(cfg.model)}
