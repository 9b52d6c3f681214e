"""Fine-tuning engine on real data (DSB nuclei crops): loss goes down, exact resume, DDP path, class head,
checkpoint round trip through load_finetuned / load_model."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from medsamkit.core.errors import InputError
from medsamkit.core.objects import extract_objects
from medsamkit.io.datasets import Case, open_dataset
from medsamkit.models import load_model
from medsamkit.models.finetuned import (
    CHECKPOINT_FORMAT,
    ClassHeadMaskDecoder,
    apply_recipe,
    finetuned_state,
)
from medsamkit.models.loading import load_finetuned
from medsamkit.predictor import Predictor
from medsamkit.prompts import parse_modes
from medsamkit.prompts.clicks import resolve_strategy
from medsamkit.training import FinetuneConfig, finetune
from medsamkit.training.checkpoints import TrainState
from medsamkit.training.config import check_config, lr_at, recipe_of, resume_differences
from medsamkit.training.data import TrainTile, epoch_batches, grow_validation, split_by_image, split_cases
from medsamkit.training.objective import Objective
from medsamkit.training.validate import pick_clicks

QUADRANTS = {"A": [(0, 0)], "B": [(128, 0), (128, 128)]}


@pytest.fixture(scope="module")
def dsb():
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    return case.image, case.label


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory, dsb):
    """Two real data sets: folders A (one 128x128 DSB crop) and B (two), 8-bit PNG + uint16 labels."""
    root = tmp_path_factory.mktemp("dsb")
    image, label = dsb
    lo, hi = np.percentile(image, [0.5, 99.5])
    u8 = (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    for name, corners in QUADRANTS.items():
        (root / name / "images").mkdir(parents=True)
        (root / name / "labels").mkdir()
        for i, (r, c) in enumerate(corners):
            Image.fromarray(u8[r : r + 128, c : c + 128]).save(root / name / "images" / f"{name}{i}.png")
            Image.fromarray(label[r : r + 128, c : c + 128].astype(np.uint16)).save(
                root / name / "labels" / f"{name}{i}.png")
    return root


def _cfg(root, out, **kw) -> FinetuneConfig:
    base = dict(data=[str(root / "A"), str(root / "B")], out=str(out), prompts="box,iter2", class_head=True,
                epochs=5, lr=1e-4, batch_size=1, max_objects=1, val_objects=1, val_fraction=0.34,
                cache=str(root / "cache"), show_progress=False)
    base.update(kw)
    return FinetuneConfig(**base)


def _losses(run) -> list[float]:
    with (run / "steps.csv").open() as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.mark.parametrize(("n", "fraction", "n_val"), [(10, 0.2, 2), (4, 0.25, 1), (2, 0.1, 1), (1, 0.5, 0),
                                                       (5, 0.0, 0), (3, 0.9, 2)])
def test_split_by_image(n, fraction, n_val):
    train, val = split_by_image(n, fraction, seed=3)
    assert len(val) == n_val and sorted(train + val) == list(range(n))
    assert split_by_image(n, fraction, seed=3) == (train, val)


def _case(name: str, volume: str | None = None) -> Case:
    meta = {"volume": volume} if volume else {}
    return Case(name, np.zeros((4, 4)), np.zeros((4, 4), np.int32), meta=meta)


def test_split_keeps_each_patient_volume_on_one_side_and_splits_within_each_data_set():
    # data set 0: four patient volumes of five slices each; data set 1: ten 2D images
    cases = [_case(f"p{v}/z{z}", f"p{v}") for v in range(4) for z in range(5)]
    cases += [_case(f"img{i}") for i in range(10)]
    origin = [0] * 20 + [1] * 10
    train, val = split_cases(cases, origin, 0.25, seed=0)
    assert sorted(train + val) == list(range(30)) and not set(train) & set(val)
    val_patients = {cases[i].meta["volume"] for i in val if origin[i] == 0}
    train_patients = {cases[i].meta["volume"] for i in train if origin[i] == 0}
    assert len(val_patients) == 1 and not val_patients & train_patients  # one whole patient held out
    assert sum(origin[i] == 0 for i in val) == 5
    assert sum(origin[i] == 1 for i in val) == 2  # round(0.25 * 10) images of the 2D set
    # a single 2D set splits exactly as split_by_image (runs made before the per-volume split are unchanged)
    assert split_cases(cases[20:], [0] * 10, 0.2, seed=3) == split_by_image(10, 0.2, seed=3)
    # one volume alone: its slices are split instead of holding out everything or nothing
    t1, v1 = split_cases(cases[:5], [0] * 5, 0.4, seed=0)
    assert len(v1) == 2 and len(t1) == 3


def test_validation_grows_by_whole_images_to_its_minimum():
    """A learn round's 20 glands on 4 images with 5 each: the 20% split holds 1 image (5 objects); growing to
    8 moves a second whole image; training keeps at least half of the objects, so 2 images of 10 cannot
    give 12."""
    cases = [_case(f"img{i}") for i in range(4)]
    train, val = split_cases(cases, [0] * 4, 0.2, seed=0)
    objects = dict.fromkeys(range(4), 5)
    assert len(val) == 1
    t2, v2 = grow_validation(cases, train, val, objects, 8, seed=0)
    assert len(v2) == 2 and set(val) <= set(v2) and sorted(t2 + v2) == [0, 1, 2, 3]
    two = dict.fromkeys(range(2), 5)
    t3, v3 = grow_validation(cases[:2], [0], [1], two, 12, seed=0)
    assert (t3, v3) == ([0], [1])  # moving image 0 would leave training nothing


def test_epoch_batches_cover_each_object_once_per_epoch():
    tiles = [TrainTile(0, (0, 0, 8, 8), [None] * 5), TrainTile(1, (0, 0, 8, 8), [None] * 3)]
    cfg = FinetuneConfig(data=["x"], out="y", batch_size=2, seed=1)
    batches = epoch_batches(tiles, cfg, epoch=0)
    # 5 objects -> batches of 2, 2, 1; 3 objects -> 2, 1
    assert sorted(len(b) for _, b in batches) == [1, 1, 2, 2, 2]
    for t in (0, 1):
        assert sorted(j for tile, b in batches if tile == t for j in b) == list(range(len(tiles[t].objects)))
    assert epoch_batches(tiles, cfg, 0) == batches and epoch_batches(tiles, cfg, 1) != batches
    limited = epoch_batches(tiles, FinetuneConfig(data=["x"], out="y", batch_size=4, max_objects=2), 0)
    assert sorted(len(b) for _, b in limited) == [2, 2]  # two objects per image
    one_image = [TrainTile(0, (0, 0, 8, 8), [None] * 5), TrainTile(0, (0, 8, 8, 16), [None] * 3)]
    for epoch in range(4):
        got = epoch_batches(one_image, FinetuneConfig(data=["x"], out="y", batch_size=4, max_objects=6), epoch)
        # tile by tile: all 5 of one tile + 1 of the other (batches 4, 1, 1) or 3 + 3 (batches 3, 3)
        assert sorted(len(b) for _, b in got) in ([1, 1, 4], [3, 3])
        assert len({(t, j) for t, b in got for j in b}) == 6


def test_cosine_schedule_is_a_function_of_the_position():
    cfg = FinetuneConfig(data=["x"], out="y", lr=1e-3, epochs=4, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(cfg, 0, 0, 10) == pytest.approx(1e-3)
    assert lr_at(cfg, 2, 0, 10) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way: the mean of the ends
    assert lr_at(cfg, 3, 9, 10) == pytest.approx(1e-4, rel=0.02)  # last step: close to the floor
    seq = [lr_at(cfg, e, b, 10) for e in range(4) for b in range(10)]
    assert all(a > b for a, b in zip(seq, seq[1:]))  # strictly decreasing
    assert lr_at(FinetuneConfig(data=["x"], out="y", lr=3e-4), 3, 5, 10) == 3e-4  # constant


def test_resume_differences_defaults_and_epochs():
    base = asdict(FinetuneConfig(data=["x"], out="y"))
    older = {k: v for k, v in base.items() if k not in ("lr_schedule", "min_lr_ratio")}  # older run's config
    assert resume_differences(older, base) == []
    assert resume_differences({**base, "epochs": 3}, base) == []  # more epochs: a plain resume
    cosine = {**base, "lr_schedule": "cosine"}
    assert resume_differences({**cosine, "epochs": 3}, cosine) == ["epochs"]  # the curve would move
    assert resume_differences(older, cosine) == ["lr_schedule"]


def test_steps_on_real_data_decrease_the_loss(dsb):
    model = load_model("litemedsam")
    apply_recipe(model, recipe_of(FinetuneConfig(data=["x"], out="y"), []))
    image, label = dsb[0][:128, 128:256], dsb[1][:128, 128:256]
    emb = Predictor(model).embed(image)
    objs = sorted(extract_objects(label, "instance", 20), key=lambda o: -o.area)[:2]
    truths = [o.mask_in((0, 0, 128, 128)) for o in objs]
    objective = Objective(model, parse_modes("center"))  # points: far from solved zero-shot
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    losses = []
    for _ in range(3):
        loss = objective(emb.features.clone(), True, emb.input_size, truths, [], np.random.default_rng(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0]



def test_the_box_anchor_adds_the_tight_box_loss_of_every_object(dsb):
    """box_anchor=w: the drawn modes' loss plus w times the loss the same objects have with their tight box."""
    model = load_model("litemedsam")
    apply_recipe(model, recipe_of(FinetuneConfig(data=["x"], out="y"), []))
    image, label = dsb[0][:128, 128:256], dsb[1][:128, 128:256]
    emb = Predictor(model).embed(image)
    truths = [o.mask_in((0, 0, 128, 128)) for o in sorted(extract_objects(label, "instance", 20), key=lambda o: -o.area)[:3]]

    def loss(modes: str, anchor: float = 0.0) -> float:
        objective = Objective(model, parse_modes(modes), anchor)
        with torch.no_grad():
            return float(objective(emb.features, True, emb.input_size, truths, [], np.random.default_rng(0)))

    center, box = loss("center"), loss("box")
    assert box > 0 and abs(loss("center", 0.5) - (center + 0.5 * box)) < 1e-5
    with pytest.raises(InputError, match="box_anchor"):
        check_config(FinetuneConfig(data=["x"], out="y", box_anchor=-1))

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resume_reproduces_the_next_step(two_sets, tmp_path):
    """Set B alone (two images, no validation): an interrupted run resumed gives the same losses."""
    cfg = partial(_cfg, two_sets, data=[str(two_sets / "B")], class_head=False, val_fraction=0.0, prompts="iter2")
    whole = finetune(cfg(tmp_path / "whole", max_steps=2))
    assert (whole["train_images"], whole["val_images"], whole["epochs_done"]) == (2, 0, 1)
    assert 0 < whole["embed_seconds"] <= whole["seconds"]  # decoder mode filled the cache first
    assert whole["val_sources"] == []
    assert finetune(cfg(tmp_path / "resumed", max_steps=1))["stopped"] == "max_steps"
    assert not (tmp_path / "resumed" / "best.pt").exists()
    finetune(cfg(tmp_path / "resumed", max_steps=2))
    losses = _losses(tmp_path / "whole")
    assert len(losses) == 2 and _losses(tmp_path / "resumed") == losses  # to the last digit written
    assert (tmp_path / "resumed" / "best.pt").is_file()  # no validation: best by training loss


@pytest.mark.slow
def test_class_head_run_resume_ddp_and_loading(two_sets, tmp_path, monkeypatch):
    whole = finetune(_cfg(two_sets, tmp_path / "whole", max_steps=2))
    assert whole["train_images"] == 2 and whole["val_images"] == 1 and whole["steps"] == 2
    assert whole["classes"] == ["A", "B"]
    assert len(whole["val_sources"]) == 1  # the held-out image is named in the summary
    # 2 train images x 1 object, batches of 1: epoch 1 ends with step 2 -> validation + checkpoints
    assert whole["epochs_done"] == 1 and whole["best_epoch"] == 1
    for name in ("metrics.csv", "curves.png", "last.pt", "best.pt", "summary.json"):
        assert (tmp_path / "whole" / name).is_file()
    with (tmp_path / "whole" / "metrics.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert {"val_dice_box", "val_dice_iter2", "val_class_accuracy"} <= set(row)
    assert 0.0 <= float(row["val_dice_box"]) <= 1.0
    assert set(whole["last"]["class_accuracy"]) == {"A", "B"}
    assert sum(whole["last"]["class_objects"].values()) == whole["val_objects"]
    trained = whole["parameters"]["trainable"]
    # decoder 4,058,340 + prompt encoder 6,220 + class token 256 + class head 256*256+256 + 256*2+2
    assert trained == 4_058_340 + 6_220 + 256 + (256 * 256 + 256) + (256 * 2 + 2)

    interrupted = finetune(_cfg(two_sets, tmp_path / "resumed", max_steps=1))
    assert interrupted["stopped"] == "max_steps" and interrupted["steps"] == 1
    resumed = finetune(_cfg(two_sets, tmp_path / "resumed", max_steps=2))
    assert resumed["steps"] == 2 and resumed["epochs_done"] == 1
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "whole")  # step 2 included, to the digit
    rows = []
    for run in ("whole", "resumed"):
        with (tmp_path / run / "metrics.csv").open() as fh:
            rows.append([{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)])
    assert rows[0] == rows[1] and len(rows[0]) == 1  # same epoch-1 loss, validation Dice and class accuracy

    with pytest.raises(InputError, match="lr differ"):
        finetune(_cfg(two_sets, tmp_path / "resumed", max_steps=3, lr=1e-3))

    # torchrun-style environment with one process: gloo init, DDP wrap, the same first step
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    ddp = finetune(_cfg(two_sets, tmp_path / "ddp", max_steps=1))
    assert ddp["steps"] == 1 and not torch.distributed.is_initialized()
    assert _losses(tmp_path / "ddp")[0] == pytest.approx(_losses(tmp_path / "whole")[0], rel=1e-5)
    monkeypatch.delenv("WORLD_SIZE")

    loaded = load_model(str(tmp_path / "whole"))  # a run folder means its best.pt
    assert isinstance(loaded.mask_decoder, ClassHeadMaskDecoder) and loaded.class_names == ["A", "B"]
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["steps"] == 2


def _cli_finetune(prefix: list[str], out, root) -> subprocess.CompletedProcess:
    """`medsamkit finetune` on set B (two images, 2 objects each, batches of 1, no validation), lr ~0."""
    args = ["finetune", "--data", str(root / "B"), "--out", str(out), "--prompts", "box", "--epochs", "1",
            "--lr", "1e-12", "--batch-size", "1", "--max-objects", "2", "--val-fraction", "0",
            "--cache", str(root / "cache"), "--tile", "0"]
    env = {**os.environ, "MEDSAMKIT_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, *prefix, "-m", "medsamkit", *args], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_two_process_ddp_averages_the_two_ranks_batches(two_sets, tmp_path):
    """torchrun with 2 CPU processes (gloo): each global step takes batches b and b+1 (one per rank) and
    logs their mean loss. With lr 1e-12 the weights do not move, so a single-process run's losses of
    steps 1..4 are the per-batch losses at the start, and the DDP run must log (L1+L2)/2, (L3+L4)/2."""
    single = _cli_finetune([], tmp_path / "single", two_sets)
    assert single.returncode == 0, single.stderr[-2000:]
    losses = _losses(tmp_path / "single")
    assert len(losses) == 4 and len(set(losses)) == 4  # four different batches
    ddp = _cli_finetune(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                        tmp_path / "ddp", two_sets)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["epochs_done"] == 1  # 4 batches / 2 ranks
    got = _losses(tmp_path / "ddp")
    assert got == pytest.approx([(losses[0] + losses[1]) / 2, (losses[2] + losses[3]) / 2], rel=1e-5)
    assert got[0] != pytest.approx(losses[0], rel=1e-3)  # rank 1's batch really entered the mean
    assert (tmp_path / "ddp" / "last.pt").is_file() and (tmp_path / "ddp" / "best.pt").is_file()


def test_load_finetuned_round_trip_gives_the_same_masks(tmp_path, dsb):
    """LoRA + class head with changed weights: saved, rebuilt from the registry (LoRA merged into the encoder's
    weights at load), the same masks and IoU predictions to float rounding."""
    torch.manual_seed(0)
    model = load_model("litemedsam")
    recipe = recipe_of(FinetuneConfig(data=["x"], out="y", mode="lora", lora_rank=2, lora_targets="qkv,proj",
                                      train_decoder=True), ["one", "two"])
    apply_recipe(model, recipe)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)  # as if trained
    path = tmp_path / "run.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "base_model": "litemedsam", "base_checkpoint": None,
                "base_sha256": "", "recipe": recipe, "model": finetuned_state(model, recipe)}, path)
    loaded = load_finetuned(path)
    image, label = dsb[0][:128, :128], dsb[1][:128, :128]
    boxes = np.stack([o.box() for o in list(extract_objects(label, "instance", 20))[:3]])
    a = Predictor(model.eval()).set_image(image).predict(boxes=boxes, multimask=True)
    b = Predictor(loaded).set_image(image).predict(boxes=boxes, multimask=True)
    assert np.array_equal(a.masks, b.masks) and np.allclose(a.iou, b.iou, atol=1e-5)
    assert np.allclose(a.low_res_logits, b.low_res_logits, atol=1e-4)
    assert a.masks[:, 0].any()

    bad = torch.load(path, weights_only=True)
    bad["model"].pop(next(k for k in bad["model"] if "lora_b" in k))
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="1 missing keys"):
        load_finetuned(tmp_path / "bad.pt")
    with pytest.raises(InputError, match="not a medsamkit fine-tuning checkpoint"):
        torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
        load_finetuned(tmp_path / "plain.pt")


@pytest.mark.parametrize(("change", "message"), [
    ({"mode": "full"}, "unknown --mode"),
    ({"optimizer": "lbfgs"}, "unknown --optimizer"),
    ({"data": ["builtin:dsb-nuclei"], "class_head": True}, "--class-head needs"),
    ({"val_fraction": 1.0}, "--val-fraction"),
    ({"box_floor": True, "prompts": "center,iter2"}, "--box-floor needs"),
    ({"box_floor": True, "val_fraction": 0.0}, "--box-floor needs"),
])
def test_bad_configuration(tmp_path, two_sets, change, message):
    with pytest.raises(InputError, match=message):
        finetune(_cfg(two_sets, tmp_path / "bad", **change))


def test_cli_reports_bad_input_in_one_line(tmp_path, two_sets):
    from click.testing import CliRunner

    import medsamkit.cli.embed  # noqa: F401  (registers the verbs on the group)
    import medsamkit.cli.finetune  # noqa: F401
    from medsamkit.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["finetune", "--data", str(two_sets / "A"), "--out", str(tmp_path / "r"),
                               "--mode", "full"])
    assert res.exit_code == 2 and "'full' is not one of" in res.output
    res = runner.invoke(main, ["finetune", "--data", str(two_sets / "A"), "--out", str(tmp_path / "r"),
                               "--class-head"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].startswith("error: A: --class-head needs")
    res = runner.invoke(main, ["embed", "--help"])
    assert res.exit_code == 0 and "--tile-overlap" in res.output


def test_validation_chooses_the_click_strategy_and_the_checkpoint_carries_it(two_sets, tmp_path):
    # a run trained with clicks validates them natively, by the search and mixed; auto then serves the best one
    summary = finetune(_cfg(two_sets, tmp_path / "run", prompts="box,center", class_head=False, max_steps=2))
    row = summary["last"]
    assert row["clicks"] in ("native", "search", "mixed")
    other = "search" if row["clicks"] != "search" else "native"
    assert all(row[f"val_clicks_{row['clicks']}"] >= row[f"val_clicks_{s}"] for s in ("native", "search", "mixed"))
    assert row["val_dice_center"] == pytest.approx(row[f"val_clicks_{row['clicks']}"], abs=1e-6)
    with (tmp_path / "run" / "metrics.csv").open() as fh:
        assert next(csv.DictReader(fh))["clicks"] == row["clicks"]
    ckpt = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["clicks"] == row["clicks"]
    model = load_model(str(tmp_path / "run"))
    assert model.click_strategy == row["clicks"] and resolve_strategy(model, "auto") == row["clicks"]
    assert resolve_strategy(model, other) == other  # an explicit choice still wins
    # a box-only run chooses nothing: auto stays by the model (search for the bundled box-only model)
    plain = finetune(_cfg(two_sets, tmp_path / "box", prompts="box", class_head=False, max_steps=2))
    assert "clicks" not in plain["last"]
    assert resolve_strategy(load_model(str(tmp_path / "box")), "auto") == "search"


def test_the_chosen_strategy_is_the_one_with_the_higher_click_mean():
    modes = parse_modes("box,center,iter2")
    dices = {("box", "native"): [0.9], ("center", "native"): [0.5], ("center", "search"): [0.7],
             ("iter2", "native"): [0.6], ("iter2", "search"): [0.5]}
    out = pick_clicks(dices, modes, ("native", "search"))
    assert out["clicks"] == "search" and out["val_clicks_search"] == pytest.approx(0.6)
    assert (out["val_dice_box"], out["val_dice_center"], out["val_dice_iter2"]) == (0.9, 0.7, 0.5)
    dices[("iter2", "search")] = [0.4]  # a tie: native, the decoder's own reading of the clicks
    assert pick_clicks(dices, modes, ("native", "search"))["clicks"] == "native"
    # mixed: the decoder's reading of clicks given at once, the search's corrections after
    dices.update({("center", "mixed"): [0.5], ("iter2", "mixed"): [0.8]})
    out = pick_clicks(dices, modes, ("native", "search", "mixed"))
    assert out["clicks"] == "mixed" and out["val_clicks_mixed"] == pytest.approx(0.65)
    assert (out["val_dice_center"], out["val_dice_iter2"]) == (0.5, 0.8)


def _metric_rows(run) -> list[dict]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_box_floor_keeps_the_starting_weights_when_training_lowers_box_dice(two_sets, tmp_path):
    # a learning rate that wrecks the decoder: every trained epoch validates below the start's box Dice, so
    # best.pt stays the starting weights (epoch 0) and answers exactly as the base model does
    out = tmp_path / "floor"
    summary = finetune(_cfg(two_sets, out, class_head=False, box_floor=True, lr=0.05, epochs=2, max_objects=4,
                            batch_size=4))
    rows = _metric_rows(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and rows[0]["step"] == "0" and rows[0]["train_loss"] == ""
    floor = float(rows[0]["val_dice_box"])
    assert all(float(r["val_dice_box"]) < floor for r in rows[1:])  # the case the rule is for
    assert summary["best_epoch"] == 0
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert best["box_floor"] == pytest.approx(floor, abs=1e-6) and best["step"] == 0
    base = load_model("litemedsam").state_dict()
    assert all(torch.equal(v, base[k]) for k, v in best["model"].items() if k in base)
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert last["step"] > 0 and any(not torch.equal(v, base[k]) for k, v in last["model"].items() if k in base)


def test_box_floor_validates_the_start_once_across_a_resume(two_sets, tmp_path):
    out = tmp_path / "floor"
    finetune(_cfg(two_sets, out, class_head=False, box_floor=True, epochs=2, max_steps=1))
    first = _metric_rows(out)
    assert [r["epoch"] for r in first] == ["0"]
    summary = finetune(_cfg(two_sets, out, class_head=False, box_floor=True, epochs=2, max_steps=None))
    rows = _metric_rows(out)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and rows[0] == first[0]
    floor = float(rows[0]["val_dice_box"])
    best = next(r for r in rows if int(r["epoch"]) == summary["best_epoch"])
    assert float(best["val_dice_box"]) >= floor  # the best epoch never validates below the start


def test_an_epoch_below_the_box_floor_is_never_the_best():
    state = TrainState(best_score=0.5, best_epoch=0, floor=0.9)
    assert not state.improves(0.8, 0.89)  # a better mean bought with box answers: refused
    assert state.improves(0.8, 0.9) and not state.improves(0.4, 0.95)
    assert not state.improves(0.8, None)  # no box validation: no evidence the floor holds
    assert TrainState(best_score=0.5).improves(0.8, 0.1)  # without a floor the score alone decides
