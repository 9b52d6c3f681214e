"""What the two SAMAug benchmarks (samaug_glas.py, samaug_monuseg.py) share: the point model fine-tuned on a train
split, the everything-mode settings of a priors kind, the priors of each split, and the per-image comparison of
every SAMAug arm with the same seed's baseline."""

from __future__ import annotations

from pathlib import Path

from medsamkit.samaug.everything import EverythingConfig
from medsamkit.samaug.priors import PriorsConfig, compute_priors


def points_model(train: str, out: str | Path, epochs: int, device: str | None, quiet: bool, **settings) -> str:
    """OUT/points-model/best.pt: the LiteMedSAM decoder fine-tuned with center / random1 clicks on the TRAIN split
    only (its validation images are train images too); a finished run is reused, more epochs resume it.
    ``settings``: the benchmark's own FinetuneConfig fields (objects per image, tiles, ...)."""
    from medsamkit.training import FinetuneConfig, finetune

    run = Path(out) / "points-model"
    finetune(FinetuneConfig(data=[str(train)], out=str(run), prompts="center,random1", epochs=epochs, batch_size=16,
                            val_fraction=0.2, device=device, show_progress=not quiet, **settings))
    return str(run / "best.pt")


def everything_config(kind: str, box: dict, points: dict) -> EverythingConfig:
    """Everything mode of a priors kind: the box-only model's proposals (``box`` settings) or the point model's
    grid (``points`` settings)."""
    return EverythingConfig(**box) if kind == "box" else EverythingConfig(proposal="points", **points)


def priors_folders(kind: str, model: str, splits: dict[str, tuple[str, int | None]], out: str | Path,
                   everything: EverythingConfig, device: str | None, quiet: bool) -> dict[str, str]:
    """The priors of each split {name: (data SPEC, at most N images)} under OUT/priors/KIND/NAME, computed once and
    then reused (a folder resumes)."""
    folders = {}
    for split, (data, limit) in splits.items():
        folder = Path(out) / "priors" / kind / split
        compute_priors(PriorsConfig(data=str(data), out=str(folder), model=model, device=device,
                                    everything=everything, max_images=limit, progress=not quiet))
        folders[split] = str(folder)
    return folders


def wins_losses(base: dict[str, float], got: dict[str, float]) -> dict[str, int]:
    """Per-image comparison of an arm's scores against the baseline's on the images both have."""
    diffs = [got[name] - base[name] for name in got if name in base]
    return {"wins": sum(d > 1e-9 for d in diffs), "losses": sum(d < -1e-9 for d in diffs),
            "ties": sum(abs(d) <= 1e-9 for d in diffs)}


def paired(per_image: dict[str, dict[str, dict[str, float]]]) -> dict:
    """Per seed, each SAMAug arm against the same seed's baseline: per-image wins / losses / ties, from
    {seed: {arm: {image: score}}}."""
    out: dict = {}
    for seed, arms in per_image.items():
        base = arms.get("baseline", {})
        for arm, got in arms.items():
            if arm != "baseline" and base:
                out.setdefault(arm, {})[seed] = wins_losses(base, got)
    return out
