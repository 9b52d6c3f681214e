"""nnU-Net folders: channels of a case stacked (not one volume per channel file), dataset.json read, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsamkit.core.errors import InputError
from medsamkit.io.datasets import VolumeCase, open_dataset
from medsamkit.io.nifti_nrrd import read_nifti
from medsamkit.io.volume_data import to_unit_range
from medsamkit.io.windowing import window_by_name

SHAPE = (3, 64, 64)  # (z, y, x)
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])
CASES = ("case_a", "case_b")
DATASET_JSON = {
    "channel_names": {"0": "T2", "1": "ADC"},
    "labels": {"background": 0, "gland": 1, "lesion": 2, "whole": [1, 2]},
    "numTraining": 2,
    "file_ending": ".nii.gz",
}


def _save(array_zyx: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), AFFINE), str(path))


def _channel(case: int, channel: int) -> np.ndarray:
    """Channel 0: two bright squares (what the model is prompted on); channel 1: a ramp, its profile per case."""
    if channel == 0:
        img = np.full(SHAPE, 100.0, dtype=np.float32)
        img[:, 8:28, 10:30] = 900.0
        img[:, 36:56, 34:54] = 600.0
        return img
    ramp = (np.arange(SHAPE[2], dtype=np.float32) * channel) ** (case + 1)  # a different profile per case
    return np.broadcast_to(ramp, SHAPE).copy()


def _label() -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[:, 8:28, 10:30] = 1
    lab[:, 36:56, 34:54] = 2
    return lab


def make_nnunet(root: Path, dataset_json: dict | None = DATASET_JSON, channels: int = 2) -> Path:
    """An nnU-Net raw folder: imagesTr/CASE_000k.nii.gz for each channel, labelsTr/CASE.nii.gz, dataset.json."""
    for i, case in enumerate(CASES):
        for c in range(channels):
            _save(_channel(i, c), root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        _save(_label(), root / "labelsTr" / f"{case}.nii.gz")
    if dataset_json is not None:
        (root / "dataset.json").write_text(json.dumps(dataset_json))
    return root


def test_channels_of_a_case_are_one_volume_with_dataset_json_names(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "Dataset001_Prostate")
    ds = open_dataset(root)
    assert len(ds) == 2  # not 4: one volume per case, not per channel file
    cases = list(ds.items())
    assert [c.name for c in cases] == list(CASES)
    for case in cases:
        assert isinstance(case, VolumeCase)
        channels = case.meta["channels"]
        assert channels.shape == (2, *SHAPE)
        for c in range(2):  # stacked in channel order, each mapped to [0, 1] like any volume
            expected = to_unit_range(read_nifti(root / "imagesTr" / f"{case.name}_{c:04d}.nii.gz"))
            np.testing.assert_array_equal(channels[c], expected)
        np.testing.assert_array_equal(case.image, channels[0])
        assert not np.array_equal(channels[0], channels[1])
        np.testing.assert_array_equal(case.label, _label())
        assert case.spacing == pytest.approx((2.5, 0.8, 0.8))
        assert case.meta["channel_names"] == ["T2", "ADC"]
        assert case.meta["classes"] == {1: "gland", 2: "lesion"}
        assert case.meta["regions"] == {"whole": [1, 2]}
        assert case.meta["dataset_json"] == str(root / "dataset.json")
    # the ramps differ per case, so the second case's channel 1 is its own file, not the first case's
    assert not np.array_equal(cases[0].meta["channels"][1], cases[1].meta["channels"][1])
    assert len(list(ds.cases())) == 2 * SHAPE[0]


def test_v1_dataset_json_modality_and_labels(tmp_path: Path) -> None:
    v1 = {"modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "gland", "2": "lesion"}}
    case = next(open_dataset(make_nnunet(tmp_path / "Task05", v1)).items())
    assert case.meta["channel_names"] == ["T2", "ADC"]
    assert case.meta["classes"] == {1: "gland", 2: "lesion"}


def test_folder_without_dataset_json_groups_channels_by_case(tmp_path: Path) -> None:
    ds = open_dataset(make_nnunet(tmp_path / "raw", None))
    cases = list(ds.items())
    assert len(cases) == 2 and [c.meta["channels"].shape[0] for c in cases] == [2, 2]
    assert cases[0].meta["channel_names"] == ["channel 0", "channel 1"]
    assert cases[0].meta["classes"] == {}


def test_single_file_cases_named_like_their_label(tmp_path: Path) -> None:
    """Decathlon-style files (imagesTr/liver_0012.nii.gz beside labelsTr/liver_0012.nii.gz) are one channel."""
    _save(_channel(0, 0), tmp_path / "imagesTr" / "liver_0012.nii.gz")
    _save(_label(), tmp_path / "labelsTr" / "liver_0012.nii.gz")
    (tmp_path / "imagesTr" / "._liver_0012.nii.gz").write_bytes(b"macOS fork")
    cases = list(open_dataset(tmp_path).items())
    assert [c.name for c in cases] == ["liver_0012"] and cases[0].meta["channels"].shape == (1, *SHAPE)


def test_ct_channel_name_selects_the_ct_window_and_window_applies_to_each_channel(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ct", {**DATASET_JSON, "channel_names": {"0": "CT", "1": "PET"}})
    case = next(open_dataset(root).items())
    hu = read_nifti(root / "imagesTr" / "case_a_0000.nii.gz").array
    np.testing.assert_array_equal(case.image, window_by_name(hu, "soft_tissue"))
    case = next(open_dataset(root, window="0,1000").items())
    np.testing.assert_allclose(case.meta["channels"][0], hu / 1000.0, atol=1e-6)
    np.testing.assert_allclose(case.meta["channels"][1], np.clip(_channel(0, 1) / 1000.0, 0, 1), atol=1e-6)


def test_missing_channel_file_is_named(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "d")
    (root / "imagesTr" / "case_b_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case_b_0001\.nii\.gz: missing channel 1 of case case_b"):
        open_dataset(root)
    (root / "dataset.json").unlink()  # without dataset.json the other cases say how many channels there are
    with pytest.raises(InputError, match=r"case_b_0001\.nii\.gz: missing channel 1"):
        open_dataset(root)


def test_channel_not_in_dataset_json(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "d", channels=3)
    with pytest.raises(InputError, match=r"case_a_0002\.nii\.gz: channel 2 is not in .*dataset\.json"):
        open_dataset(root)


def test_label_without_image_and_image_without_label(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "d")
    _save(_label(), root / "labelsTr" / "case_c.nii.gz")
    with pytest.raises(InputError, match=r"labelsTr/case_c\.nii\.gz: label without image"):
        open_dataset(root)
    (root / "labelsTr" / "case_c.nii.gz").unlink()
    (root / "labelsTr" / "case_a.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case_a_0000\.nii\.gz: no label case_a\.nii\.gz in labelsTr/"):
        open_dataset(root)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"dataset\.json: not valid JSON"),
        ("[1, 2]", r"dataset\.json: dataset\.json must hold an object"),
        (json.dumps({"labels": {"background": 0}}), r"dataset\.json: dataset\.json has neither channel_names"),
        (json.dumps({**DATASET_JSON, "channel_names": {"0": "T2", "2": "ADC"}}), r"number the channels 0\.\.1"),
        (json.dumps({**DATASET_JSON, "labels": {"background": 0, "gland": 1.5}}), r"label 'gland' must have an integ"),
        (json.dumps({**DATASET_JSON, "labels": {"background": "0"}}), r"labels keys must be label values"),
        (json.dumps({**DATASET_JSON, "file_ending": ".png"}), r"file_ending '\.png' is not a volume format"),
    ],
)
def test_bad_dataset_json_is_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    root = make_nnunet(tmp_path / "d")
    (root / "dataset.json").write_text(text)
    with pytest.raises(InputError, match=message) as info:
        open_dataset(root)
    assert "\n" not in str(info.value) and str(root / "dataset.json") in str(info.value)


def test_channels_on_different_grids_are_refused(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "d")
    affine = AFFINE.copy()
    affine[0, 3] = 5.0
    shifted = nib.Nifti1Image(np.zeros(SHAPE[::-1], np.float32), affine)
    nib.save(shifted, str(root / "imagesTr" / "case_a_0001.nii.gz"))
    with pytest.raises(InputError, match=r"case_a_0001\.nii\.gz: channel affine differs from the affine of"):
        next(open_dataset(root).items())


def test_volume_engine_scores_both_cases(tmp_path: Path) -> None:
    """evaluate-volume on the folder sees two volumes (given predictions: no model), on the label's grid."""
    from medsamkit.volumes import EvaluateVolumeConfig, evaluate_volumes
    from medsamkit.volumes.masks import mask_file_name

    root = make_nnunet(tmp_path / "d")
    preds = tmp_path / "preds"
    for case in CASES:
        _save(_label(), preds / mask_file_name(case))
    cfg = EvaluateVolumeConfig(data=str(root), out=str(tmp_path / "out"), predictions=str(preds),
                               show_progress=False)
    evaluate_volumes(cfg)
    rows = list(csv.DictReader((tmp_path / "out" / "per_volume.csv").open()))
    assert sorted((r["volume"], r["class"], float(r["dice"])) for r in rows) == [
        (c, v, 1.0) for c in CASES for v in "12"
    ]


def test_volume_engine_prompts_channel_zero(litemedsam, tmp_path: Path) -> None:
    """The model is prompted on channel 0 of a case (the squares): both classes found."""
    from medsamkit.predictor import Predictor
    from medsamkit.volumes import EvaluateVolumeConfig, evaluate_volumes

    root = make_nnunet(tmp_path / "d")
    cfg = EvaluateVolumeConfig(data=str(root), out=str(tmp_path / "out"), prompts="box", max_images=1,
                               show_progress=False)
    evaluate_volumes(cfg, Predictor(litemedsam))
    rows = list(csv.DictReader((tmp_path / "out" / "per_volume.csv").open()))
    assert sorted((r["volume"], r["class"]) for r in rows) == [("case_a", "1"), ("case_a", "2")]
    assert all(float(r["dice"]) >= 0.8 for r in rows), rows
