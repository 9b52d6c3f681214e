"""nnU-Net raw dataset folders (imagesTr/ + labelsTr/ [+ dataset.json]) as datasets of multi-channel volumes.

Layout (nnU-Net v2 "dataset format"): ``imagesTr/CASE_XXXX<file_ending>`` is channel XXXX of case CASE and
``labelsTr/CASE<file_ending>`` its label map. dataset.json names the channels (``channel_names``; v1:
``modality``), the labels (v2 ``{"name": value}``, a list of values for a region; v1 ``{"value": "name"}``)
and the ``file_ending`` (v1 has none: NIfTI). Without dataset.json the files are still grouped by case id,
one channel per file; a file named like its label (``CASE<file_ending>``, the Medical Segmentation Decathlon
form) is a one-channel case.

Representation: ``VolumeCase.image`` stays one (Z, Y, X) array in [0, 1], channel 0, the model input.
The volume engine and `VolumeCase.slices` take ``image[z]`` as one grey slice, and the engine's 3-slice
input stacks neighbouring slices as the colour channels, so a channel axis there would not run. All
channels, each mapped to [0, 1] by `to_unit_range` (``window`` applies to every channel; a channel named
"CT" gets the CT rule when no window is given), are kept in ``meta["channels"]`` as (C, Z, Y, X) in
channel order (``image`` is a view of channel 0), with ``meta["channel_names"]`` and
``meta["channel_paths"]``. Label names go to ``meta["classes"]`` ({value: name}, background left out, as
for DICOM RTSTRUCT / SEG cases) and region labels to ``meta["regions"]`` ({name: [values]}).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.io.cases import Dataset, VolumeCase
from medsamkit.io.volume import VOLUME_SUFFIXES, check_same_grid, file_suffix
from medsamkit.io.volume_data import to_unit_range
from medsamkit.io.volume_reader import read_label_volume, read_volume
from medsamkit.io.windowing import WindowChoice

#: nnU-Net's channel suffix: a case id, an underscore and four digits.
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class NnunetInfo:
    """What dataset.json says; without one (``source`` empty) the channels come from the file names."""

    channel_names: tuple[str, ...] | None = None
    classes: dict[int, str] = field(default_factory=dict)
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    file_ending: str | None = None
    source: str = ""


@dataclass(frozen=True)
class NnunetCase:
    """One case's files: its channel files in channel order and its label file."""

    case_id: str
    channels: tuple[Path, ...]
    label: Path


def _channel_names(raw: object, path: Path, key: str) -> tuple[str, ...]:
    """Channel names in channel order from ``{"0": "T2", "1": "ADC"}``; keys must be 0..n-1."""
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path}: {key} must be a non-empty object like {{\"0\": \"CT\"}}")
    try:
        numbered = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise InputError(f"{path}: {key} keys must be channel numbers, got {sorted(raw)}") from None
    if sorted(numbered) != list(range(len(numbered))):
        raise InputError(f"{path}: {key} must number the channels 0..{len(numbered) - 1}, got {sorted(numbered)}")
    return tuple(numbered[i] for i in range(len(numbered)))


def _label_value(value: object, path: Path, name: str) -> int | tuple[int, ...]:
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise InputError(f"{path}: label {name!r} must have an integer value (or a list for a region)")
    if isinstance(value, list):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise InputError(f"{path}: region label {name!r} must list integer values")
        return tuple(value)
    return value


def _label_names(raw: object, path: Path) -> tuple[dict[int, str], dict[str, tuple[int, ...]]]:
    """({value: name} without background, {region name: values}) from v2 or v1 ``labels``."""
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path}: labels must be a non-empty object like {{\"background\": 0, \"tumour\": 1}}")
    if all(isinstance(v, str) for v in raw.values()):  # v1: {"0": "background", "1": "liver"}
        try:
            pairs = {str(v): int(k) for k, v in raw.items()}
        except ValueError:
            raise InputError(f"{path}: labels keys must be label values, got {sorted(raw)}") from None
    else:
        pairs = {str(k): _label_value(v, path, str(k)) for k, v in raw.items()}
    classes = {v: name for name, v in pairs.items() if isinstance(v, int) and v != 0}
    regions = {name: v for name, v in pairs.items() if isinstance(v, tuple)}
    return dict(sorted(classes.items())), regions


def read_dataset_json(path: Path) -> NnunetInfo:
    """Channel names, label names and file ending from an nnU-Net dataset.json; `InputError` when malformed."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable ({err})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: dataset.json must hold an object, got {type(raw).__name__}")
    key = "channel_names" if "channel_names" in raw else "modality"
    if key not in raw:
        raise InputError(f"{path}: dataset.json has neither channel_names nor modality")
    if "labels" not in raw:
        raise InputError(f"{path}: dataset.json has no labels")
    ending = raw.get("file_ending")
    if ending is not None and (not isinstance(ending, str) or file_suffix(Path("x" + ending)) not in VOLUME_SUFFIXES):
        raise InputError(f"{path}: file_ending {ending!r} is not a volume format medsamkit reads "
                         f"({', '.join(VOLUME_SUFFIXES)})")
    classes, regions = _label_names(raw["labels"], path)
    return NnunetInfo(_channel_names(raw[key], path, key), classes, regions, ending, str(path))


def _split_name(path: Path, ending: str | None) -> str | None:
    """The file's name without its ending, or None when it is not a volume file of this dataset."""
    name = path.name
    if name.startswith(".") or not path.is_file():  # hidden files, e.g. macOS ._ forks in MSD archives
        return None
    if ending is not None:
        return name[: -len(ending)] if name.endswith(ending) and len(name) > len(ending) else None
    suffix = file_suffix(path)
    return name[: -len(suffix)] if suffix in VOLUME_SUFFIXES else None


def _ending_of(path: Path, ending: str | None) -> str:
    return ending if ending is not None else path.name[len(_split_name(path, None) or ""):]


def _group_channels(root: Path, info: NnunetInfo, label_ids: set[str]) -> dict[str, dict[int, Path]]:
    """Case id -> {channel: file} for imagesTr/; a file named like a label is that case's channel 0."""
    groups: dict[str, dict[int, Path]] = {}
    n = None if info.channel_names is None else len(info.channel_names)
    for path in sorted((root / "imagesTr").iterdir()):
        stem = _split_name(path, info.file_ending)
        if stem is None:
            continue
        match = CHANNEL_SUFFIX.match(stem)
        if stem in label_ids or match is None:
            if n is not None and n > 1:
                raise InputError(f"{path}: no _XXXX channel suffix, but {info.source} lists {n} channels "
                                 "(4D files are not supported)")
            case, channel = stem, 0
        else:
            case, channel = match["case"], int(match["channel"])
        if n is not None and channel >= n:
            raise InputError(f"{path}: channel {channel} is not in {info.source} (channels 0..{n - 1})")
        if channel in groups.setdefault(case, {}):
            raise InputError(f"{path}: case {case} has channel {channel} twice "
                             f"(also {groups[case][channel].name})")
        groups[case][channel] = path
    return groups


def nnunet_cases(root: Path, info: NnunetInfo) -> list[NnunetCase]:
    """The cases of an nnU-Net folder, every channel and label present; `InputError` naming a missing file."""
    labels = {}
    for path in sorted((root / "labelsTr").iterdir()):
        stem = _split_name(path, info.file_ending)
        if stem is not None:
            labels[stem] = path
    groups = _group_channels(root, info, set(labels))
    if not groups:
        raise InputError(f"{root}: imagesTr/ holds no NIfTI/NRRD volumes")
    n = len(info.channel_names) if info.channel_names is not None else max(max(g) + 1 for g in groups.values())
    cases = []
    for case, channels in sorted(groups.items()):
        first = channels[min(channels)]
        ending = _ending_of(first, info.file_ending)
        for k in range(n):
            if k not in channels:
                missing = root / "imagesTr" / f"{case}_{k:04d}{ending}"
                raise InputError(f"{missing}: missing channel {k} of case {case}")
        if case not in labels:
            raise InputError(f"{first}: no label {case}{ending} in labelsTr/")
        cases.append(NnunetCase(case, tuple(channels[k] for k in range(n)), labels[case]))
    for stem, path in labels.items():
        if stem not in groups:
            raise InputError(f"{path}: label without image (no {stem}_0000 or {stem} volume in imagesTr/)")
    return cases


def load_nnunet_case(case: NnunetCase, info: NnunetInfo, kind: str = "class",
                     window: WindowChoice = None) -> VolumeCase:
    """Read a case's channels (all on channel 0's grid) and label as a VolumeCase (see the module docstring)."""
    names = info.channel_names or tuple(f"channel {k}" for k in range(len(case.channels)))
    volumes = []
    for path, name in zip(case.channels, names):
        vol = read_volume(path)
        if volumes:
            check_same_grid(vol, volumes[0], what="channel")
        if name.strip().upper() == "CT":  # nnU-Net's own CT normalisation is keyed on this channel name
            vol.meta["Modality"] = "CT"
        volumes.append(vol)
    label = read_label_volume(case.label, volumes[0])
    channels = np.stack([to_unit_range(vol, window) for vol in volumes])
    meta = {
        "volume": volumes[0], "label_path": str(case.label), "channels": channels,
        "channel_names": list(names), "channel_paths": [str(p) for p in case.channels],
        "classes": dict(info.classes), "regions": {k: list(v) for k, v in info.regions.items()},
        "dataset_json": info.source,
    }
    return VolumeCase(case.case_id, channels[0], label.array, tuple(volumes[0].spacing), kind, meta)


def nnunet_dataset(root: Path, kind: str = "class", window: WindowChoice = None) -> Dataset:
    """A dataset over an nnU-Net folder's training cases (dataset.json read when present)."""
    json_path = root / "dataset.json"
    info = read_dataset_json(json_path) if json_path.is_file() else NnunetInfo()
    cases = nnunet_cases(root, info)
    n_channels = len(cases[0].channels)
    return Dataset(root.name, [lambda c=c: load_nnunet_case(c, info, kind, window) for c in cases],
                   f"nnU-Net folder {root}: {len(cases)} cases x {n_channels} channels", kind,
                   [c.case_id for c in cases])
