"""Evaluation engine on real data: CSV contents, resume without recomputation, clear errors after partial work."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from medsamkit.core.errors import InputError
from medsamkit.core.objects import extract_objects
from medsamkit.core.tiling import plan_tiles
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate
from medsamkit.io.images import write_mask


def _rows(out):
    with open(out / "per_object.csv") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_writes_rows_and_resumes(tmp_path, small_folder, predictor):
    cfg = EvaluateConfig(data=str(small_folder), out=str(tmp_path / "ev"), prompts="box,center,iter3",
                         max_objects=4, show_progress=False, figures=False)
    seen = []

    def stop_after_first(row):
        seen.append(row["image"])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, predictor, on_image=stop_after_first)
    out = tmp_path / "ev"
    partial = json.loads((out / "summary.json").read_text())
    assert partial["interrupted"] and partial["images"] == 1
    first = _rows(out)
    # 4 objects x (box 1 + center 1 + iter3 3 steps) x (model + baseline)
    assert len(first) == 4 * 5 * 2
    summary = evaluate(cfg, predictor)
    assert summary["new_images"] == 1 and summary["images"] == 2 and not summary["interrupted"]
    rows = _rows(out)
    assert rows[: len(first)] == first  # finished work kept as it was
    modes = {(r["method"], r["mode"]) for r in rows}
    assert ("model", "iter3") in modes and ("random_walker", "box") in modes
    box = [float(r["dice"]) for r in rows if r["mode"] == "box" and r["method"] == "model"]
    assert np.median(box) > 0.6
    times = summary["methods"]  # the baseline's time is reported apart from the model's
    assert times["random_walker"]["seconds"] > 0 and times["random_walker"]["prompts"] == 2 * 4 * 5
    assert times["model"]["seconds"] >= times["model"]["encoder_seconds"] > 0
    again = evaluate(cfg, predictor)
    assert again["new_images"] == 0 and len(_rows(out)) == len(rows)
    md = (out / "summary.md").read_text()
    assert "| model | box |" in md and "iter3" in md
    assert not (out / "figures").exists()  # bug: --no-figures still drew the click curve


def test_figures_come_from_saved_rows_and_masks_without_a_model(tmp_path, small_folder, predictor, monkeypatch):
    """The report never runs a model: a finished run's figures are redrawn with no predictor at all."""
    cfg = EvaluateConfig(data=str(small_folder), out=str(tmp_path / "ev"), prompts="box,iter2",
                         max_objects=3, max_images=1, baseline=False, show_progress=False)
    evaluate(cfg, predictor)
    out = tmp_path / "ev"
    for name in ("click_curve.png", "percentile_examples.png"):
        (out / "figures" / name).unlink()
    import medsamkit.models

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not load a model")

    monkeypatch.setattr(medsamkit.models, "load_model", no_model)
    again = evaluate(cfg)  # nothing left to compute: no model is loaded, figures come from the files
    assert again["new_images"] == 0
    assert again["figures"] == ["figures/click_curve.png", "figures/percentile_examples.png"]
    assert (out / "figures" / "percentile_examples.png").stat().st_size > 1000
    final = [r for r in _rows(out) if r["final"] == "1"]
    assert all(json.loads(r["prompt"])["box"] is not None for r in final if r["mode"] == "box")


def test_changed_config_in_same_folder_is_refused(tmp_path, small_folder, predictor):
    cfg = EvaluateConfig(data=str(small_folder), out=str(tmp_path / "ev"), prompts="box", max_objects=2,
                         max_images=1, baseline=False, show_progress=False, figures=False)
    evaluate(cfg, predictor)
    cfg.prompts = "center"
    with pytest.raises(InputError, match="holds results of a different configuration \\(prompts differ\\)"):
        evaluate(cfg, predictor)


def test_a_new_best_pt_under_the_same_path_is_not_resumed(tmp_path, small_folder):
    """Bug: resuming keyed on the model *path*, so a retrained RUN/best.pt silently reused the old rows."""
    import torch

    from medsamkit.models import load_model
    from medsamkit.models.finetuned import CHECKPOINT_FORMAT, apply_recipe, finetuned_state
    from medsamkit.training.config import FinetuneConfig, recipe_of

    model = load_model("litemedsam")
    recipe = recipe_of(FinetuneConfig(data=["x"], out="y"), [])
    apply_recipe(model, recipe)
    run = tmp_path / "run"
    run.mkdir()

    def save(shift: float) -> None:
        state = {k: v + shift for k, v in finetuned_state(model, recipe).items()}
        torch.save({"format": CHECKPOINT_FORMAT, "base_model": "litemedsam", "base_checkpoint": None,
                    "base_sha256": "", "recipe": recipe, "model": state}, run / "best.pt")

    save(0.0)
    cfg = EvaluateConfig(data=str(small_folder), out=str(tmp_path / "ev"), prompts="box", max_objects=1,
                         max_images=1, baseline=False, show_progress=False, figures=False, model=str(run))
    assert evaluate(cfg)["new_images"] == 1
    assert evaluate(cfg)["new_images"] == 0  # the same file: resumed, nothing recomputed
    save(1e-3)  # retrained: same path, other weights
    with pytest.raises(InputError, match="model_sha256 differ"):
        evaluate(cfg)


def test_size_mismatch_stops_after_writing_finished(tmp_path, small_folder, predictor):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(small_folder, root)
    write_mask(root / "labels" / "crop1.png", np.zeros((10, 10), np.uint8))
    cfg = EvaluateConfig(data=str(root), out=str(tmp_path / "ev"), prompts="box", max_objects=2,
                         baseline=False, show_progress=False, figures=False)
    with pytest.raises(InputError, match=r"crop1.png: label size \(10, 10\) does not match image size \(160, 200\)"):
        evaluate(cfg, predictor)
    assert (tmp_path / "ev" / "summary.md").exists() and len(_rows(tmp_path / "ev")) == 2


@pytest.mark.parametrize("args,msg", [
    (["--prompts", "box,wobble"], "unknown prompt mode"),
    (["--data", "nowhere/at/all"], "nowhere/at/all: data not found"),
])
def test_cli_evaluate_errors(tmp_path, small_folder, args, msg):
    from medsamkit.cli import main

    base = ["evaluate", "--data", str(small_folder), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(main, base + args)
    assert res.exit_code == 2 and msg in res.output


def test_empty_folder_dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cfg = EvaluateConfig(data=str(tmp_path), out=str(tmp_path / "o"), show_progress=False)
    with pytest.raises(InputError, match="no image/label pairs"):
        evaluate(cfg)


def test_tiles_contain_their_objects(monuseg_root):
    from medsamkit.io.images import read_label

    lab = read_label(sorted((monuseg_root / "test" / "labels").iterdir())[0])
    objs = list(extract_objects(lab, "instance", 20))
    plan = plan_tiles(objs, lab.shape, 256, 64)
    assert sum(len(v) for v in plan.values()) == len(objs)
    for (y0, x0, y1, x1), members in plan.items():
        assert y1 - y0 == 256 and x1 - x0 == 256
        for o in members:
            assert o.mask_in((y0, x0, y1, x1)).sum() == o.area  # whole object inside its tile
    assert len(plan) <= 30  # a 1000x1000 image: ~25 grid tiles, few extra
