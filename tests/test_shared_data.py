"""tests/shared_data.py: where shared data is found, and that a missing data set fails under CI=true."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_data import in_ci, require_data


def make_dataset(shared: Path, name: str, probe: str) -> Path:
    """A real folder tree shared/data/NAME/PROBE with one file in it."""
    folder = shared / "data" / name / probe
    folder.mkdir(parents=True)
    (folder / "case.png").write_bytes(b"")
    return shared / "data" / name


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A checkout folder with nothing beside it, and no MEDSAMKIT_SHARED."""
    monkeypatch.delenv("MEDSAMKIT_SHARED", raising=False)
    repo = tmp_path / "checkout"
    repo.mkdir()
    return repo


def test_missing_data_fails_under_ci(checkout, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"MoNuSeg data not found .*CI=true requires") as info:
        require_data("monuseg", "MoNuSeg data", probe="test/images", repo=checkout)
    assert str(checkout.parent / "shared" / "data" / "monuseg" / "test" / "images") in str(info.value)


@pytest.mark.parametrize("value", [None, "false", "1", ""])
def test_missing_data_skips_outside_ci(checkout, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="MoNuSeg data not found .*set MEDSAMKIT_SHARED"):
        require_data("monuseg", "MoNuSeg data", probe="test/images", repo=checkout)


def test_incomplete_data_set_fails_under_ci(checkout, monkeypatch):
    # shared/data/monuseg exists beside the checkout but has no test/images: still missing.
    make_dataset(checkout.parent / "shared", "monuseg", "train/images")
    monkeypatch.setenv("CI", "True")
    with pytest.raises(pytest.fail.Exception):
        require_data("monuseg", "MoNuSeg data", probe="test/images", repo=checkout)


def test_found_beside_the_checkout(checkout, monkeypatch):
    monkeypatch.setenv("CI", "true")
    expected = make_dataset(checkout.parent / "shared", "monuseg", "test/images")
    assert require_data("monuseg", "MoNuSeg data", probe="test/images", repo=checkout) == expected


def test_environment_variable_comes_first(checkout, tmp_path, monkeypatch):
    make_dataset(checkout.parent / "shared", "monuseg", "test/images")
    elsewhere = make_dataset(tmp_path / "elsewhere", "monuseg", "test/images")
    monkeypatch.setenv("MEDSAMKIT_SHARED", str(tmp_path / "elsewhere"))
    assert require_data("monuseg", "MoNuSeg data", probe="test/images", repo=checkout) == elsewhere


def test_environment_variable_without_the_data_set_falls_back(checkout, tmp_path, monkeypatch):
    beside = make_dataset(checkout.parent / "shared", "monuseg", "test/images")
    make_dataset(tmp_path / "elsewhere", "glas", "")
    monkeypatch.setenv("MEDSAMKIT_SHARED", str(tmp_path / "elsewhere"))
    assert require_data("monuseg", "MoNuSeg data", probe="test/images", repo=checkout) == beside
