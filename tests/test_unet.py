"""U-Net engine (medsamkit.samaug.unet, unet_train, unet_eval): inputs, crops, schedule, training that learns on
real crops, exact resume through the run store, and sliding-window eval."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsamkit.core.errors import InputError
from medsamkit.io.images import read_image, read_label, to_uint8_rgb, write_mask
from medsamkit.metrics import aji, object_dice, object_f1
from medsamkit.samaug.unet import build_unet, image_unit_rgb, load_run, sample_batch
from medsamkit.samaug.unet_eval import UNetEvalConfig, evaluate, predict_probs
from medsamkit.samaug.unet_train import UNetConfig, train


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny U-Net steps on one thread (train() leaves threads to the CLI's runtime.setup): on a shared 2-core
    machine two OpenMP threads made them far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A U-Net small enough for a few CPU iterations in a test; the engine's defaults are larger. One thread:
# on a shared 2-core machine, 2 OpenMP threads made these tiny steps 100x slower (2 s instead of 10 ms).
TINY = dict(batch_size=2, crop=32, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, progress=False,
            threads=1)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, request) -> Path:
    """A folder SPEC with one 128x128 uint8 RGB real crop: MoNuSeg when present, else the builtin DSB nuclei."""
    try:
        root = request.getfixturevalue("monuseg_root")
        img_path = sorted((root / "train" / "images").iterdir())[0]
        image = read_image(img_path)[:128, :128]
        label = read_label(root / "train" / "labels" / (img_path.stem + ".png"))[:128, :128]
    except pytest.skip.Exception:
        from medsamkit.io.datasets import open_dataset

        case = next(open_dataset("builtin:dsb-nuclei").cases())
        image, label = to_uint8_rgb(np.asarray(case.image)[:128, :128]), np.asarray(case.label)[:128, :128]
    folder = tmp_path_factory.mktemp("unet_data")
    (folder / "images").mkdir()
    Image.fromarray(np.asarray(image)).save(folder / "images" / "crop.png")
    write_mask(folder / "labels" / "crop.png", label.astype(np.uint16))
    return folder


@pytest.mark.parametrize(
    "iterations, lr_switch, it, expected",
    [
        (50000, 30000, 29999, 5e-4),  # the paper's schedule
        (50000, 30000, 30000, 5e-5),
        (10, None, 5, 5e-4),  # default switch at 60%: round(6.0) = 6
        (10, None, 6, 5e-5),
    ],
)
def test_learning_rate_schedule(iterations, lr_switch, it, expected):
    cfg = UNetConfig(data="x", out="y", iterations=iterations, lr_switch=lr_switch)
    assert cfg.lr_at(it) == expected


@pytest.mark.parametrize(
    "image, expected_max, expected_min",
    [
        (np.full((4, 4, 3), 255, dtype=np.uint8), 1.0, 1.0),  # uint8: / 255, not min-max
        (np.array([[3, 4], [3, 3]], dtype=np.uint8), 4 / 255, 3 / 255),  # ... even a dark uint8 image
        (np.array([[0, 1000], [2000, 4095]], dtype=np.uint16), 1.0, 0.0),  # 12-bit in uint16: min-max, not dark
        (np.array([[6553, 13107], [6553, 6553]], dtype=np.uint16), 1.0, 0.0),  # other integers: min-max
        (np.array([[-1000, 400], [0, 3000]], dtype=np.int16), 1.0, 0.0),  # CT HU
        (np.full((2, 2), 0.5, dtype=np.float32), 0.5, 0.5),  # anything already in [0, 1] is kept
        (np.array([[-3.0, 0.25], [7.0, 0.5]], dtype=np.float32), 1.0, 0.0),  # other floats: min-max
        (np.full((3, 3), 700, dtype=np.uint16), 0.0, 0.0),  # constant image: zeros
        (np.dstack([np.array([[0, 4095], [2000, 100]], np.uint16)] * 3 + [np.full((2, 2), 65535, np.uint16)]),
         1.0, 0.0),  # RGBA: the (dropped) alpha does not set the colour range
    ],
)
def test_image_unit_rgb(image, expected_max, expected_min):
    out = image_unit_rgb(image)
    assert out.dtype == np.float32 and out.shape == (*image.shape[:2], 3)
    assert float(out.max()) == pytest.approx(expected_max, abs=1e-4)
    assert float(out.min()) == pytest.approx(expected_min, abs=1e-4)


def test_baseline_input_is_the_fused_input_without_priors():
    # The two arms of the SAMAug comparison must differ only by the priors.
    from medsamkit.samaug.priors import fuse

    image = np.random.default_rng(1).integers(0, 256, size=(9, 7, 3)).astype(np.uint8)
    zeros = np.zeros((9, 7), dtype=np.float32)
    np.testing.assert_array_equal(image_unit_rgb(image), fuse(image, zeros, zeros.astype(np.uint8)))


def test_crops_keep_input_and_target_aligned():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 3, size=(40, 50)).astype(np.uint8)
    image = np.stack([target / 2.0, np.zeros_like(target, float), np.ones_like(target, float)], -1).astype(np.float32)
    xb, yb = sample_batch([image], [target], rng, batch_size=16, crop=16)
    assert xb.shape == (16, 3, 16, 16) and yb.shape == (16, 16, 16)
    # however a crop was rotated or flipped, the image channel still equals the target / 2
    assert np.array_equal(xb[:, 0], yb / 2.0)
    assert np.all(xb[:, 2] == 1.0)


def test_training_runs_writes_checkpoint_and_lowers_the_loss(small_data, tmp_path):
    run = tmp_path / "run"
    result = train(UNetConfig(data=str(small_data), out=str(run), iterations=6, checkpoint_every=3, **TINY))
    assert len(result.losses) == 6
    assert result.losses[-1] < result.losses[0]
    assert (run / "last.pt").is_file() and (run / "loss.png").is_file()
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["iteration"] == 6 and state["config"]["channels"] == [8, 16, 32]
    with (run / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    # default switch at round(0.6 * 6) = 4: iterations 1-4 use 5e-4, the updates after use 5e-5
    assert [float(r["lr"]) for r in rows] == [5e-4] * 4 + [5e-5] * 2
    assert all(float(r["seconds"]) > 0 for r in rows)


def test_resume_continues_at_the_checkpoint_with_identical_losses(small_data, tmp_path):
    cfg = dict(data=str(small_data), checkpoint_every=2, lr_switch=3, **TINY)
    straight = train(UNetConfig(out=str(tmp_path / "a"), iterations=4, **cfg))
    first = train(UNetConfig(out=str(tmp_path / "b"), iterations=2, **cfg))
    # a crash after the log rows of iteration 3 were written but before its checkpoint: the row is cut
    with (tmp_path / "b" / "metrics.csv").open("a") as fh:
        fh.write("3,9.99,0.0005,0.1\n")
    resumed = train(UNetConfig(out=str(tmp_path / "b"), iterations=4, **cfg))
    assert first.losses == straight.losses[:2]
    assert resumed.start_iteration == 2
    assert resumed.losses == straight.losses[2:]  # bit-identical, across the lr switch at 3
    with (tmp_path / "b" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["loss"]) for r in rows] == straight.losses
    # rerunning a finished run does nothing
    again = train(UNetConfig(out=str(tmp_path / "b"), iterations=4, **cfg))
    assert again.losses == [] and again.start_iteration == 4
    # the same data folder written as a relative path is the same run (bug: it was refused as "different")
    rel = os.path.relpath(small_data)
    same = train(UNetConfig(out=str(tmp_path / "b"), iterations=4, **{**cfg, "data": rel}))
    assert same.start_iteration == 4
    # a different experiment in the same folder is refused
    with pytest.raises(InputError, match=r"b: holds results of a different configuration \(seed differ\); use another"):
        train(UNetConfig(out=str(tmp_path / "b"), iterations=8, **{**cfg, "seed": 1}))


def test_sliding_window_probabilities():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_unet((8, 16, 32), (2, 2), 1)
    x = np.random.default_rng(0).random((70, 90, 3), dtype=np.float32)
    probs = predict_probs(model, x, roi=32, overlap=0.25)
    assert probs.shape == (3, 70, 90)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_evaluate_writes_instances_and_aji(small_data, tmp_path):
    run = tmp_path / "run"
    train(UNetConfig(data=str(small_data), out=str(run), iterations=2, **TINY))
    out = tmp_path / "eval"
    summary = evaluate(UNetEvalConfig(run=str(run), data=str(small_data), out=str(out), glas=True, progress=False,
                                      threads=1))
    assert summary["n"] == 1 and summary["checkpoint_iteration"] == 2
    assert json.loads((out / "summary.json").read_text())["mean_aji"] == summary["mean_aji"]
    pred = read_label(out / "masks" / "crop.png")
    truth = read_label(small_data / "labels" / "crop.png")
    assert pred.shape == (128, 128)
    with (out / "per_image.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["image"] == "crop" and int(rows[0]["n_pred"]) == int(pred.max())
    # the scores are those of the instances written to masks/, against the image's own label map
    assert summary["mean_aji"] == pytest.approx(aji(pred, truth))
    assert float(rows[0]["object_f1"]) == pytest.approx(object_f1(pred=pred, truth=truth))
    assert float(rows[0]["object_dice"]) == pytest.approx(object_dice(pred=pred, truth=truth))
    # a baseline run must not be evaluated on fused inputs, nor a missing run at all
    with pytest.raises(InputError, match="without priors"):
        evaluate(UNetEvalConfig(run=str(run), data=str(small_data), priors=str(tmp_path), progress=False))
    with pytest.raises(InputError, match="no U-Net checkpoint"):
        load_run(tmp_path / "missing")


def test_cli_train_then_eval(small_data, tmp_path):
    from click.testing import CliRunner

    import medsamkit.cli.unet  # noqa: F401  (registers the `unet` group on `main`)
    from medsamkit.cli import main

    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(main, ["unet", "train", "--data", str(small_data), "--out", str(run), "--iterations", "1",
                               "--batch-size", "1", "--crop", "32", "--channels", "8,16,32", "--strides", "2,2",
                               "--res-units", "1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "trained to iteration 1" in res.output
    res = runner.invoke(main, ["unet", "eval", "--run", str(run), "--data", str(small_data), "--no-masks",
                               "--threads", "1"])
    assert res.exit_code == 0, res.output
    summary = res.output[res.output.index('{\n  "n"'):]  # after any progress bar
    assert json.loads(summary)["n"] == 1
    assert not (run / f"eval-{small_data.name}" / "masks").exists()
    res = runner.invoke(main, ["unet", "eval", "--run", str(tmp_path / "nope"), "--data", str(small_data)])
    assert res.exit_code == 2 and "no U-Net checkpoint" in res.output


def test_training_and_eval_with_priors(small_data, tmp_path):
    from skimage.segmentation import find_boundaries

    label = read_label(small_data / "labels" / "crop.png")
    seg = np.where(label > 0, 1.5, 0.0).astype(np.float32)  # overlapping masks: clipped to 1 when fused
    boundary = find_boundaries(label, mode="outer").astype(np.uint8)
    priors = tmp_path / "priors"
    (priors / "priors").mkdir(parents=True)
    np.savez_compressed(priors / "priors" / "crop.npz", seg=seg, boundary=boundary)  # priors.py file format

    from medsamkit.samaug.unet import load_cases

    (_, x, _), = load_cases(str(small_data), str(priors))
    image = read_image(small_data / "images" / "crop.png")
    np.testing.assert_allclose(x[..., 1], image[..., 1] / 255.0 + (label > 0), atol=1e-6)
    np.testing.assert_allclose(x[..., 2], image[..., 2] / 255.0 + boundary, atol=1e-6)

    run = tmp_path / "run"
    result = train(UNetConfig(data=str(small_data), out=str(run), priors=str(priors), iterations=2, **TINY))
    assert len(result.losses) == 2
    summary = evaluate(UNetEvalConfig(run=str(run), data=str(small_data), priors=str(priors), progress=False,
                                      out=str(tmp_path / "eval"), threads=1))
    pred = read_label(tmp_path / "eval" / "masks" / "crop.png")
    assert summary["priors"] == str(priors) and summary["mean_aji"] == pytest.approx(aji(pred, label))
    with pytest.raises(InputError, match="trained with SAMAug priors"):
        evaluate(UNetEvalConfig(run=str(run), data=str(small_data), progress=False))


def test_cli_paper_fusion_reads_the_masks_and_is_part_of_the_run_identity(small_data, tmp_path):
    """`unet train --fusion paper` fuses the listing's priors recomputed from RUN/masks (no priors npz is
    needed), records the rule in the run, refuses a rerun with another rule, and eval fuses by the run's rule."""
    from click.testing import CliRunner
    from skimage.segmentation import find_boundaries

    import medsamkit.cli.unet  # noqa: F401  (registers the `unet` group on `main`)
    from medsamkit.cli import main
    from medsamkit.samaug.everything import MaskRecord
    from medsamkit.samaug.priors import save_masks
    from medsamkit.samaug.unet import load_cases

    label = read_label(small_data / "labels" / "crop.png")
    records = []
    for i in np.unique(label[label > 0])[:40].tolist():  # the real nuclei as everything-mode masks, stability 0.9
        rows, cols = np.nonzero(label == i)
        box = (int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))
        crop = label[box[1] : box[3] + 1, box[0] : box[2] + 1] == i
        records.append(MaskRecord(crop, box, int(crop.sum()), 0.9, 0.9))
    priors = tmp_path / "priors"
    save_masks(priors / "masks" / "crop.npz", records, label.shape)
    (_, x, _), = load_cases(str(small_data), str(priors), prior_normalisation="paper")
    image = read_image(small_data / "images" / "crop.png")
    chosen = np.isin(label, np.unique(label[label > 0])[:40])
    thick = np.zeros(label.shape, bool)
    for r in records:
        thick |= find_boundaries(r.mask(label.shape).astype(np.uint8), mode="thick")
    np.testing.assert_allclose(x[..., 1], image[..., 1] / 255.0 + 0.9 * chosen, atol=1e-6)
    np.testing.assert_allclose(x[..., 2], image[..., 2] / 255.0 + thick, atol=1e-6)

    run = tmp_path / "run"
    args = ["unet", "train", "--data", str(small_data), "--priors", str(priors), "--out", str(run), "--iterations",
            "1", "--batch-size", "1", "--crop", "32", "--channels", "8,16,32", "--strides", "2,2", "--res-units", "1",
            "--threads", "1"]
    runner = CliRunner()
    res = runner.invoke(main, [*args, "--fusion", "paper"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["prior_normalisation"] == "paper"
    res = runner.invoke(main, [*args, "--fusion", "clip"])
    assert res.exit_code == 2 and "prior_normalisation differ" in res.output
    res = runner.invoke(main, ["unet", "eval", "--run", str(run), "--data", str(small_data), "--priors", str(priors),
                               "--no-masks", "--threads", "1"])
    assert res.exit_code == 0, res.output  # "clip" would need priors/crop.npz, which this folder lacks


def test_validation_images_are_held_out_and_scored(small_data, tmp_path):
    data = tmp_path / "two"
    image, label = read_image(small_data / "images" / "crop.png"), read_label(small_data / "labels" / "crop.png")
    for name, k in (("a", 0), ("b", 1)):
        (data / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(np.rot90(image, k))).save(data / "images" / f"{name}.png")
        write_mask(data / "labels" / f"{name}.png", np.rot90(label, k).astype(np.uint16))
    result = train(UNetConfig(data=str(data), out=str(tmp_path / "run"), iterations=1, val_images=1, **TINY))
    assert result.validation["n"] == 1
    assert json.loads((tmp_path / "run" / "validation.json").read_text()) == result.validation
    # the score is that of the held-out image b (the last by name), which training never saw
    only_b = tmp_path / "only_b"
    for sub in ("images", "labels"):
        (only_b / sub).mkdir(parents=True)
        (only_b / sub / "b.png").write_bytes((data / sub / "b.png").read_bytes())
    held_out = evaluate(UNetEvalConfig(run=str(tmp_path / "run"), data=str(only_b), progress=False, save_masks=False))
    assert result.validation["mean_aji"] == pytest.approx(held_out["mean_aji"])
    with pytest.raises(InputError, match="cannot hold out 2"):
        train(UNetConfig(data=str(data), out=str(tmp_path / "run2"), iterations=1, val_images=2, **TINY))


@pytest.mark.parametrize(
    "content, message",
    [(b"not a checkpoint", "not a medsamkit U-Net checkpoint"), (None, "no U-Net checkpoint")],
)
def test_bad_checkpoints_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "last.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_run(path)



def _write_crops(folder: Path, image: np.ndarray, label: np.ndarray, corners, size: tuple[int, int]) -> Path:
    (folder / "images").mkdir(parents=True)
    for i, (r, c) in enumerate(corners):
        Image.fromarray(np.ascontiguousarray(image[r : r + size[0], c : c + size[1]])).save(folder / "images" / f"{i}.png")
        write_mask(folder / "labels" / f"{i}.png", label[r : r + size[0], c : c + size[1]].astype(np.uint16))
    return folder


def _dsb_crops(root: Path) -> tuple[Path, Path]:
    """builtin:dsb-nuclei (one 512x512 fluorescence image): six 256x128 crops to train on, two held out."""
    from medsamkit.io.datasets import open_dataset

    case = next(open_dataset("builtin:dsb-nuclei").cases())
    image, label = to_uint8_rgb(np.asarray(case.image)), np.asarray(case.label)
    corners = [(r, c) for r in (0, 256) for c in (0, 128, 256, 384)]
    return (_write_crops(root / "train", image, label, corners[:6], (256, 128)),
            _write_crops(root / "held_out", image, label, corners[6:], (256, 128)))


def _monuseg_crops(root: Path, monuseg: Path) -> tuple[Path, Path]:
    """MoNuSeg train images (H&E, 40x): four 192x192 crops of the first to train on, two of the second held out."""
    first, second = sorted((monuseg / "train" / "images").iterdir())[:2]
    data = []
    for name, path, corners in (("train", first, [(0, 0), (0, 256), (256, 0), (256, 256)]),
                                ("held_out", second, [(0, 0), (256, 256)])):
        label = read_label(monuseg / "train" / "labels" / (path.stem + ".png"))
        data.append(_write_crops(root / name, read_image(path), label, corners, (192, 192)))
    return data[0], data[1]


# Measured (80 iterations, 1 thread; mean loss of the first -> last 10 iterations, held-out AJI untrained ->
# trained): DSB 0.88 -> 0.25, AJI 0.04 -> 0.78; MoNuSeg 0.81 -> 0.52, AJI 0.055 -> 0.17 (H&E nuclei are much
# harder for a net this small and this short a run).
@pytest.mark.parametrize("source, aji_gain", [("dsb", 0.4), ("monuseg", 0.06)])
def test_short_training_learns_nuclei_on_real_crops(source, aji_gain, tmp_path, request):
    if source == "monuseg":
        train_dir, held_out = _monuseg_crops(tmp_path, request.getfixturevalue("monuseg_root"))
    else:
        train_dir, held_out = _dsb_crops(tmp_path)
    cfg = UNetConfig(data=str(train_dir), out=str(tmp_path / "run"), iterations=80, lr=1e-2, lr_after=1e-3,
                     batch_size=4, crop=64, channels=(8, 16, 32), strides=(2, 2), num_res_units=1,
                     checkpoint_every=80, progress=False)
    losses = train(cfg).losses
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])

    from medsamkit.samaug.unet import load_cases
    from medsamkit.samaug.unet_eval import score_images

    torch.manual_seed(cfg.seed)  # the very network training started from
    untrained = build_unet(cfg.channels, cfg.strides, cfg.num_res_units)
    scoring = UNetEvalConfig(run=cfg.out, data=str(held_out), progress=False)
    rows = score_images(untrained, load_cases(str(held_out), None), torch.device("cpu"), scoring, roi=cfg.crop)
    before = float(np.mean([r["aji"] for r in rows]))
    after = evaluate(UNetEvalConfig(run=cfg.out, data=str(held_out), progress=False, save_masks=False))["mean_aji"]
    assert after > before + aji_gain
