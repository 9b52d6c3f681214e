"""evaluate-volume through the one results store and the one embedding cache; --classes, --window, resume."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medsamkit.core.errors import InputError
from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.io.nifti_nrrd import read_nifti, write_nifti
from medsamkit.io.volume import Volume
from medsamkit.io.windowing import parse_window
from medsamkit.predictor import Predictor
from medsamkit.volumes import EvaluateVolumeConfig, SliceEmbedder, evaluate_volumes, open_volume_dataset
from medsamkit.volumes.masks import mask_file_name

needs_lung = pytest.mark.skipif(importlib.util.find_spec("cerr") is None,
                                reason="pycerr (builtin:lung-gtv data) not installed")


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _squares(image_path: Path, label_path: Path, shift: int = 0) -> np.ndarray:
    """A 3-slice 64x64 volume with two bright squares labelled 2 and 5; returns the label array."""
    # Each slice a little brighter than the last: identical slices would share one cache entry.
    img = np.full((3, 64, 64), 100.0, dtype=np.float32) + 40.0 * np.arange(3, dtype=np.float32)[:, None, None]
    lab = np.zeros((3, 64, 64), dtype=np.uint8)
    img[:, 8 + shift:28 + shift, 10:30] += 800.0
    lab[:, 8 + shift:28 + shift, 10:30] = 2
    img[:, 36:56, 34:54] += 500.0
    lab[:, 36:56, 34:54] = 5
    like = Volume(img, (2.5, 0.8, 0.8), np.diag([0.8, 0.8, 2.5, 1.0]), image_path.name)
    write_nifti(img, image_path, like=like, dtype=np.float32)
    write_nifti(lab, label_path, like=like)
    return lab


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> tuple[str, Path]:
    """(IMAGE::LABEL spec, label path) of one two-label volume."""
    folder = tmp_path_factory.mktemp("squares")
    _squares(folder / "img.nii.gz", folder / "lab.nii.gz")
    return f"{folder / 'img.nii.gz'}::{folder / 'lab.nii.gz'}", folder / "lab.nii.gz"


@pytest.fixture(scope="module")
def first_run(litemedsam, squares, tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    """A volume evaluated once with an empty embedding cache: (cache folder, summary, per-volume rows)."""
    root = tmp_path_factory.mktemp("cached")
    cfg = EvaluateVolumeConfig(data=squares[0], out=str(root / "first"), window="0,1000", cache=str(root / "cache"),
                               show_progress=False)
    summary = evaluate_volumes(cfg, Predictor(litemedsam))
    return root / "cache", summary, _rows(root / "first" / "per_volume.csv")


def test_volume_cache_computes_once_then_hits(first_run, litemedsam, squares, tmp_path: Path) -> None:
    cache, summary, rows = first_run
    assert summary["cache"] == {"hits": 0, "computed": 3, "discarded": 0}
    assert len(list(cache.glob("*.npz"))) == 3 and all(r["embedded_slices"] == "3" for r in rows)
    cfg = EvaluateVolumeConfig(data=squares[0], out=str(tmp_path / "again"), window="0,1000", cache=str(cache),
                               show_progress=False)
    again = evaluate_volumes(cfg, Predictor(litemedsam))
    assert again["cache"] == {"hits": 3, "computed": 0, "discarded": 0}
    rerun = _rows(tmp_path / "again" / "per_volume.csv")
    assert all(r["embedded_slices"] == "0" for r in rerun)  # no encoder pass at all
    assert [r["dice"] for r in rerun] == [r["dice"] for r in rows]


def test_corrupt_cache_entry_is_recomputed_not_used(first_run, litemedsam, squares, tmp_path: Path) -> None:
    cache, _, rows = first_run
    entry = sorted(cache.glob("*.npz"))[0]
    data = bytearray(entry.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])  # damage the features
    entry.write_bytes(bytes(data))
    cfg = EvaluateVolumeConfig(data=squares[0], out=str(tmp_path / "out"), window="0,1000", cache=str(cache),
                               show_progress=False)
    summary = evaluate_volumes(cfg, Predictor(litemedsam))
    assert summary["cache"] == {"hits": 2, "computed": 1, "discarded": 1}
    again = _rows(tmp_path / "out" / "per_volume.csv")
    assert [r["dice"] for r in again] == [r["dice"] for r in rows]
    assert [r["embedded_slices"] for r in again] == ["1", "1"]
    assert EmbeddingCache(cache, litemedsam).load(entry.stem) is not None  # rewritten whole


def test_model_run_with_classes_prompts_only_that_label(first_run, litemedsam, squares, tmp_path: Path) -> None:
    cache, _, _ = first_run
    out = tmp_path / "only5"
    cfg = EvaluateVolumeConfig(data=squares[0], out=str(out), window="0,1000", cache=str(cache), classes="5",
                               save_masks=True, show_progress=False)
    evaluate_volumes(cfg, Predictor(litemedsam))
    rows = _rows(out / "per_volume.csv")
    assert [(r["class"], r["variant"]) for r in rows] == [("5", "box")] and float(rows[0]["dice"]) >= 0.8
    assert {r["class"] for r in _rows(out / "per_slice.csv")} == {"5"}
    mask = out / "masks" / "box" / "img.nii.gz"
    assert set(np.unique(read_nifti(mask).array).tolist()) == {0, 5}
    assert not [p for p in mask.parent.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_cli_evaluate_volume_classes_on_a_two_label_nifti(squares, tmp_path: Path) -> None:
    import medsamkit.cli.volume  # noqa: F401  (registers the verbs on `main`)
    from medsamkit.cli import main

    spec, label_path = squares
    pred = read_nifti(label_path)
    wrong = pred.array.copy()
    wrong[wrong == 2] = 0  # class 2 missed entirely, class 5 exact
    pred_path = write_nifti(wrong, tmp_path / "pred.nii.gz", like=pred)
    out = tmp_path / "eval"
    base = ["evaluate-volume", "--data", spec, "--predictions", str(pred_path), "--out", str(out)]
    res = CliRunner().invoke(main, [*base, "--classes", "5"])
    assert res.exit_code == 0, res.output
    rows = _rows(out / "per_volume.csv")
    assert [(r["class"], float(r["dice"])) for r in rows] == [("5", 1.0)]
    assert "| predictions | 5 | 1 | 1.000 (1.000)" in res.output and "| predictions | 2 |" not in res.output
    res = CliRunner().invoke(main, [*base, "--classes", "2"])
    assert res.exit_code == 2 and "classes differ" in res.output
    res = CliRunner().invoke(main, [*base[:-1], str(tmp_path / "all")])
    assert res.exit_code == 0, res.output
    assert sorted((r["class"], float(r["dice"])) for r in _rows(tmp_path / "all" / "per_volume.csv")) == [
        ("2", 0.0), ("5", 1.0)]


@pytest.fixture()
def two_volumes(tmp_path: Path) -> tuple[Path, Path]:
    """An nnU-Net folder of two volumes (cases a and b, one channel file each) and a folder of their exact label maps."""
    root, preds = tmp_path / "nnunet", tmp_path / "preds"
    for d in (root / "imagesTr", root / "labelsTr", preds):
        d.mkdir(parents=True)
    for name, shift in (("a", 0), ("b", 4)):
        lab = _squares(root / "imagesTr" / f"{name}_0000.nii.gz", root / "labelsTr" / f"{name}.nii.gz", shift)
        (preds / mask_file_name(name)).write_bytes((root / "labelsTr" / f"{name}.nii.gz").read_bytes())
        assert lab.max() == 5
    return root, preds


def test_ctrl_c_keeps_finished_volumes_and_resume_drops_unfinished_rows(two_volumes, tmp_path: Path) -> None:
    root, preds = two_volumes
    out = tmp_path / "run"
    cfg = EvaluateVolumeConfig(data=str(root), out=str(out), predictions=str(preds), show_progress=False)

    def interrupt(name: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_volumes(cfg, on_volume=interrupt)
    assert {r["volume"] for r in _rows(out / "per_volume.csv")} == {"a"}
    assert (out / "done.txt").read_text() == "a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["volumes"] == 1
    # A crash inside volume b left some of its rows without marking it done: they are dropped, not kept twice.
    with (out / "per_slice.csv").open("a") as fh:
        fh.write("b,predictions,2,0,400,400,1.0\n")
    seen: list[str] = []
    summary = evaluate_volumes(cfg, on_volume=seen.append)
    assert seen == ["b"] and summary["volumes"] == 2 and summary["interrupted"] is False
    slices = _rows(out / "per_slice.csv")
    assert len(slices) == 2 * 2 * 3  # 2 volumes x 2 classes x 3 slices, each once
    assert [(r["volume"], r["class"]) for r in _rows(out / "per_volume.csv")] == [
        ("a", "2"), ("a", "5"), ("b", "2"), ("b", "5")]
    # A finished folder is only reported again; other settings are refused with the differing key named.
    before = (out / "per_volume.csv").read_text()
    assert evaluate_volumes(cfg, on_volume=seen.append)["new_volumes"] == 0 and seen == ["b"]
    assert (out / "per_volume.csv").read_text() == before
    cfg.window = "0,500"
    with pytest.raises(InputError, match=r"\(window differ\)"):
        evaluate_volumes(cfg)


@needs_lung
def test_window_reaches_builtin_lung_gtv_slice_inputs_and_cache_keys(litemedsam, tmp_path: Path) -> None:
    cases = {w: open_volume_dataset("builtin:lung-gtv", parse_window(w)).loaders[0]()
             for w in ("lung", "-500,500", "-1000,400")}
    default = open_volume_dataset("builtin:lung-gtv").loaders[0]()
    lung, narrow, reference = cases["lung"], cases["-500,500"], cases["-1000,400"]
    assert lung.name == narrow.name == "lung-gtv/pat_1"
    z = int(np.flatnonzero(lung.label.any((1, 2)))[0])
    cache = EmbeddingCache(tmp_path / "cache", litemedsam)
    keys = {}
    for name, case in (("lung", lung), ("narrow", narrow), ("reference", reference), ("default", default)):
        embedder = SliceEmbedder(Predictor(litemedsam), case.image, three_slice=True, source=case.name, cache=cache)
        keys[name] = cache.key(embedder.input(z))
    assert not np.allclose(lung.image[z], narrow.image[z])
    assert len({keys["lung"], keys["narrow"], keys["reference"]}) == 3
    assert keys["reference"] == keys["default"]  # builtin:lung-gtv's default: the [-1000, 400] HU window


@needs_lung
def test_cli_window_and_max_images_on_builtin_lung_gtv(tmp_path: Path) -> None:
    import medsamkit.cli.volume  # noqa: F401  (registers the verbs on `main`)
    from medsamkit.cli import main

    case = open_volume_dataset("builtin:lung-gtv").loaders[0]()
    preds = tmp_path / "preds"
    write_nifti(case.label, preds / mask_file_name(case.name), like=case.meta["volume"])
    out = tmp_path / "eval"
    args = ["evaluate-volume", "--data", "builtin:lung-gtv", "--predictions", str(preds), "--max-images", "1",
            "--out", str(out)]
    res = CliRunner().invoke(main, [*args, "--window", "-500,500"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["window"] == "-500,500"
    assert json.loads((out / "config.json").read_text())["max_images"] == 1
    assert [r["volume"] for r in _rows(out / "per_volume.csv")] == [case.name]
    res = CliRunner().invoke(main, [*args, "--window", "lung"])
    assert res.exit_code == 2 and "window differ" in res.output


def test_cli_segment_volume_shares_the_cache_and_takes_classes(first_run, squares, tmp_path: Path) -> None:
    import medsamkit.cli.volume  # noqa: F401  (registers the verbs on `main`)
    from medsamkit.cli import main

    cache, _, _ = first_run
    image, label = squares[0].split("::")
    out = tmp_path / "seg.nii.gz"
    res = CliRunner().invoke(main, ["segment-volume", image, "--label", label, "--window", "0,1000", "--classes", "2",
                                    "--cache", str(cache), "--device", "cpu", "-o", str(out)])
    assert res.exit_code == 0, res.output
    # the progress bar (stderr) ends without a newline before the JSON line
    summary = json.loads(res.output[res.output.index('{"out"'):].splitlines()[0])
    # the same windowed slices as evaluate-volume's: every embedding comes from the cache, none is encoded
    assert summary["cache"]["computed"] == 0 and summary["cache"]["hits"] == 3 and summary["encoded_slices"] == 0
    assert list(summary["classes"]) == ["2"] and summary["classes"]["2"]["dice"] >= 0.8
    assert set(np.unique(read_nifti(out).array).tolist()) == {0, 2}


@pytest.mark.parametrize("flags, message", [
    (["--prompts", "box,box+5"], "one label map takes one prompt mode"),
    (["--prompts", "iter3"], "iter3 is interactive"),
    (["--classes", "2,x"], "expected a comma list of label values"),
])
def test_cli_segment_volume_rejects_before_loading(squares, tmp_path: Path, flags, message) -> None:
    import medsamkit.cli.volume  # noqa: F401  (registers the verbs on `main`)
    from medsamkit.cli import main

    image, label = squares[0].split("::")
    res = CliRunner().invoke(main, ["segment-volume", image, "--label", label, *flags, "-o", str(tmp_path / "o.nii.gz")])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
