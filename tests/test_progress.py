"""Every progress bar on a known amount of work shows n/total and an ETA (issue 27, defect 7: the demo showed
`evaluate: 68img`): the real commands on real crops of builtin:dsb-nuclei and a small NIfTI volume, stderr
captured."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medsamkit.cli import main


def _finished_bar(stderr: str, desc: str, total: int) -> str:
    """The last state of the bar ``desc``: it must read total/total with an elapsed<remaining bracket."""
    states = [s for s in re.split(r"[\r\n]", stderr) if s.startswith(f"{desc}:")]
    assert states, f"no {desc!r} bar in: {stderr[-500:]!r}"
    last = states[-1]
    assert re.search(rf"\b{total}/{total} \[\d\d:\d\d<\d\d:\d\d", last), last
    return last


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (result.output, result.stderr)
    return result.stderr


@pytest.fixture(scope="module")
def square_volume(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-slice 64x64 NIfTI volume with two bright squares labelled 2 and 5 (its label beside it)."""
    from medsamkit.io.nifti_nrrd import write_nifti
    from medsamkit.io.volume import Volume

    folder = tmp_path_factory.mktemp("volume")
    img = np.full((3, 64, 64), 100.0, np.float32) + 40.0 * np.arange(3, dtype=np.float32)[:, None, None]
    lab = np.zeros((3, 64, 64), np.uint8)
    img[:, 8:28, 10:30] += 800.0
    lab[:, 8:28, 10:30] = 2
    img[:, 36:56, 34:54] += 500.0
    lab[:, 36:56, 34:54] = 5
    like = Volume(img, (2.5, 0.8, 0.8), np.diag([0.8, 0.8, 2.5, 1.0]), "ct.nii.gz")
    write_nifti(img, folder / "ct.nii.gz", like=like, dtype=np.float32)
    write_nifti(lab, folder / "labels.nii.gz", like=like)
    return folder / "ct.nii.gz", folder / "labels.nii.gz"


def test_batch_verbs_show_n_of_total(small_folder, tmp_path):
    data = str(small_folder)
    _finished_bar(_run(["evaluate", "--data", data, "--prompts", "box", "--no-baseline", "--no-figures",
                        "--out", str(tmp_path / "ev")]), "evaluate", 2)
    _finished_bar(_run(["embed", "--data", data, "--out", str(tmp_path / "cache")]), "embed", 2)
    _finished_bar(_run(["samaug", "masks", "--data", data, "--out", str(tmp_path / "masks")]), "samaug", 2)


def test_volume_verbs_show_n_of_total(square_volume, tmp_path):
    image, label = square_volume
    spec = f"{image}::{label}"
    _finished_bar(_run(["evaluate-volume", "--data", spec, "--predictions", str(label), "--out",
                        str(tmp_path / "scores")]), "volumes", 1)
    _finished_bar(_run(["segment-volume", spec, "-o", str(tmp_path / "labels")]), "volumes", 1)
    # one volume, slice-wise: the three labelled slices are the known amount of work
    _finished_bar(_run(["segment-volume", str(image), "--label", str(label), "-o", str(tmp_path / "one.nii.gz")]),
                  "slices", 3)


def test_demo_bar_counts_the_cases(tmp_path, capsys):
    from medsamkit.evaluation.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=str(tmp_path), datasets=("builtin:dsb-nuclei",), prompts="box"))
    _finished_bar(capsys.readouterr().err, "evaluate", 1)
