"""Fine-tuning shares the evaluation path: the same masks out of the model (upscale_logits), the same click
loop (ClickSession), the same tiles as `embed` (--tile-overlap), the same --classes filter, and the same run
folder rules (RunStore identity, step tables). Real dsb-nuclei data and the real LiteMedSAM weights."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from medsamkit.core.errors import InputError
from medsamkit.core.objects import extract_objects
from medsamkit.core.seeds import name_key
from medsamkit.embedding.precompute import image_windows
from medsamkit.io.datasets import open_dataset
from medsamkit.predictor import upscale_logits
from medsamkit.prompts import ClickSession, parse_mode
from medsamkit.prompts.objects import object_rngs, run_mode_model
from medsamkit.training import FinetuneConfig
from medsamkit.training.checkpoints import TrainState, cut_back, log_row, open_store
from medsamkit.training.config import resume_differences
from medsamkit.training.data import plan_case_tiles
from medsamkit.training.objective import TileGeometry, click_step


@pytest.fixture(scope="module")
def dsb_case():
    return next(open_dataset("builtin:dsb-nuclei").cases())


def test_upscale_logits_is_the_predictors_postprocess(predictor, dsb_case):
    """A non-square crop (the padded model input is cropped, then resized): the same masks, and gradients flow."""
    image, label = dsb_case.image[:100, :170], dsb_case.label[:100, :170]
    objs = sorted(extract_objects(label, "instance", 20), key=lambda o: -o.area)[:4]
    predictor.set_image(image)
    pred = predictor.predict(boxes=np.stack([o.box() for o in objs]), multimask=True)
    low = torch.from_numpy(pred.low_res_logits)
    emb = predictor.embedding
    size = predictor.model.preprocessing.input_size
    logits = upscale_logits(low, size, emb.input_size, emb.original_size)
    assert logits.shape == (4, 3, 100, 170)
    assert torch.equal(logits > 0, predictor.postprocess(low))
    assert np.array_equal((logits > 0).numpy(), pred.masks) and pred.masks.any()
    geometry = TileGeometry(predictor.model, emb.input_size, emb.original_size)
    assert torch.equal(geometry.logits(low), logits)  # the training losses' path
    x = low.clone().requires_grad_(True)
    upscale_logits(x, size, emb.input_size, emb.original_size).sigmoid().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_training_clicks_equal_the_evaluation_clicks(predictor, dsb_case):
    """After k simulated clicks the training objective's prompts (click_step on a ClickSession) are the
    prompts the evaluation path (run_mode_model) gives the same objects at step k."""
    window = (0, 128, 128, 256)
    y0, x0, y1, x1 = window
    objs = sorted(extract_objects(dsb_case.label[y0:y1, x0:x1], "instance", 20), key=lambda o: -o.area)[:6]
    mode, seed, key = parse_mode("iter4"), 3, name_key("dsb-crop")
    predictor.set_image(dsb_case.image[y0:y1, x0:x1])
    full = (0, 0, 128, 128)
    runs = run_mode_model(predictor, objs, full, mode, seed, key, clicks="native")  # training decodes natively
    emb = predictor.embedding
    session = ClickSession(mode, [o.mask_in(full) for o in objs], object_rngs(objs, mode, seed, key), (128, 128))
    geometry = TileGeometry(predictor.model, emb.input_size, emb.original_size)
    clicked = 0
    for k in range(mode.n_steps):
        for i, run in enumerate(runs):
            if run.steps[k].repeated:
                continue  # exact in evaluation: finished there, fed again in training (as before)
            got, want = session.prompts[i], run.prompts[k]
            assert np.array_equal(got.points, want.points) and np.array_equal(got.labels, want.labels), (k, i)
        if k < mode.n_steps - 1:
            click_step(predictor.model, emb.features, session, geometry)
            for i, run in enumerate(runs):
                if not run.steps[k].repeated:
                    assert np.array_equal(session.history[i][-1].mask, run.masks[k]), (k, i)
        clicked = sum(len(p.points) for p in session.prompts)
    assert clicked > len(objs)  # corrective clicks were really added (not only the centre points)


def test_tile_overlap_reaches_the_tile_plan(dsb_case):
    """The tiles fine-tuning plans are tiles `embed --tile-overlap 32` cached (and not those of overlap 64)."""
    cfg = FinetuneConfig(data=["builtin:dsb-nuclei"], out="unused", tile_size=256, tile_overlap=32)
    planned = {t.window for t in plan_case_tiles(dsb_case, 0, cfg, 256)}
    assert len(planned) > 4
    assert planned <= set(image_windows(dsb_case.label, dsb_case.kind, 256, 32))
    assert not planned <= set(image_windows(dsb_case.label, dsb_case.kind, 256, 64))


def test_classes_keep_only_those_label_values(dsb_case):
    labels = sorted(o.label for o in extract_objects(dsb_case.label, dsb_case.kind, 20))[:3]
    cfg = FinetuneConfig(data=["x"], out="y", classes=",".join(map(str, labels)))
    tiles = plan_case_tiles(dsb_case, 0, cfg, 256)
    assert sorted(o.label for t in tiles for o in t.objects) == labels
    with pytest.raises(InputError, match="--classes"):
        plan_case_tiles(dsb_case, 0, FinetuneConfig(data=["x"], out="y", classes="one"), 256)


def test_cli_tile_overlap_reads_an_embed_cache_and_classes_filter(tmp_path, dsb_case):
    """`embed --tile 256 --tile-overlap 32`, then `finetune` with the same flags: every tile is read from the
    cache (none computed); `--classes` limits the objects trained on."""
    from click.testing import CliRunner

    import medsamkit.cli.finetune  # noqa: F401  (registers the verb)
    from medsamkit.cli import main
    from medsamkit.embedding.precompute import EmbedConfig, embed_dataset

    cache = tmp_path / "cache"
    embed_dataset(EmbedConfig(data="builtin:dsb-nuclei", out=str(cache), tile_size=256, tile_overlap=32))
    labels = sorted(o.label for o in extract_objects(dsb_case.label, dsb_case.kind, 20))[:5]
    res = CliRunner().invoke(main, [
        "finetune", "--data", "builtin:dsb-nuclei", "--out", str(tmp_path / "run"), "--cache", str(cache),
        "--tile", "256", "--tile-overlap", "32", "--classes", ",".join(map(str, labels)), "--max-steps", "0",
        "--val-fraction", "0", "--max-images", "1", "--prompts", "box"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_objects"] == len(labels) and summary["stopped"] == "max_steps"
    assert summary["cache"]["computed"] == 0 and summary["cache"]["hits"] == summary["train_tiles"] > 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["tile_overlap"] == 32 and config["classes"] == ",".join(map(str, labels))
    assert config["class_head"] is False


def test_run_folder_refuses_another_configuration_and_keeps_older_columns(tmp_path):
    cfg = FinetuneConfig(data=["x"], out=str(tmp_path))
    (tmp_path / "steps.csv").write_text("epoch,step,loss\n1,1,0.5\n1,2,0.4\n1,3,0.3\n")  # an older run's log
    store = open_store(tmp_path, asdict(cfg), ["epoch", "step", "train_loss", "seconds"])
    log_row(store, "steps", {"epoch": 1, "step": 4, "loss": "0.2", "lr": "0.0001"})
    cut_back(store, TrainState(epoch=0, step=2))
    assert (tmp_path / "steps.csv").read_text().splitlines() == ["epoch,step,loss", "1,1,0.5", "1,2,0.4"]
    open_store(tmp_path, {**asdict(cfg), "epochs": 20}, [])  # a constant schedule may be extended
    with pytest.raises(InputError, match=r"holds results of a different configuration \(lr differ\); "
                                         r"use another --out folder"):
        open_store(tmp_path, {**asdict(cfg), "lr": 1e-3}, [])


def test_a_config_saved_with_classes_as_the_head_flag_resumes():
    new = asdict(FinetuneConfig(data=["x"], out="y", class_head=True))
    old = {**new, "classes": True}
    del old["class_head"]
    assert resume_differences(old, new) == []
    assert resume_differences({**old, "classes": False}, new) == ["class_head"]


def test_window_reaches_the_volume_data():
    """--window is the intensity window the volume slices are trained on (as on every verb)."""
    import importlib.util

    from medsamkit.training.data import load_cases

    if importlib.util.find_spec("cerr") is None:
        pytest.skip("pycerr (builtin:lung-gtv data) not installed")
    slices = {w: load_cases(FinetuneConfig(data=["builtin:lung-gtv"], out="y", max_images=1, window=w))[0]
              for w in ("lung", "bone")}
    assert len(slices["lung"]) == len(slices["bone"]) > 0
    lung, bone = slices["lung"][0], slices["bone"][0]
    assert lung.name == bone.name and np.array_equal(lung.label, bone.label)
    assert np.abs(lung.image - bone.image).max() > 0.1
    with pytest.raises(InputError):
        load_cases(FinetuneConfig(data=["builtin:lung-gtv"], out="y", max_images=1, window="nonsense"))
