"""Adapter and LoRA fine-tuning runs end to end, with the bundled LiteMedSAM and real DSB nuclei crops: one
training step moves exactly the intended parameters, the run's checkpoint stores them apart from the base
weights (whose sha256 it records) and loads wherever ``--model RUN/best.pt`` does (evaluate's CLI, annotate's
workspace), and LoRA merged into the weights gives the unmerged forward within 1e-5."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsamkit.core.errors import InputError
from medsamkit.io.datasets import open_dataset
from medsamkit.models import get_spec, load_model
from medsamkit.models.finetuned import apply_recipe
from medsamkit.models.loading import load_finetuned
from medsamkit.models.peft import LoRALinear, add_lora, is_peft_parameter, merge_lora
from medsamkit.predictor import as_rgb_float, preprocess
from medsamkit.prompts import parse_modes
from medsamkit.training import FinetuneConfig, finetune
from medsamkit.training.data import epoch_batches
from medsamkit.training.loop import Trainer, prepare

MODES = ["adapter", "lora"]
# the adapter runs repeat the LoRA ones' plumbing with another wrapper: slow (the default suite keeps LoRA)
MODE_PARAMS = [pytest.param("adapter", marks=pytest.mark.slow), "lora"]


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """Two 128x128 crops of the bundled DSB nuclei image: 8-bit PNG images and uint16 label maps."""
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    root = tmp_path_factory.mktemp("crops")
    lo, hi = np.percentile(case.image, [0.5, 99.5])
    u8 = (np.clip((case.image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for i, (r, c) in enumerate([(0, 0), (128, 128)]):
        Image.fromarray(u8[r : r + 128, c : c + 128]).save(root / "images" / f"c{i}.png")
        Image.fromarray(case.label[r : r + 128, c : c + 128].astype(np.uint16)).save(root / "labels" / f"c{i}.png")
    return root


def _cfg(crops: Path, out: Path, mode: str, **kw) -> FinetuneConfig:
    base = dict(data=[str(crops)], out=str(out), mode=mode, train_decoder=True, prompts="box,center", epochs=1,
                batch_size=2, max_objects=2, val_fraction=0.0, adapter_bottleneck=8, lora_rank=2,
                lora_targets="qkv,proj", lr=1e-3, show_progress=False)
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module", params=MODE_PARAMS)
def run(request, crops, tmp_path_factory) -> tuple[str, Path]:
    """A real two-step run (one epoch: 2 objects of each crop) of each mode; its folder."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    summary = finetune(_cfg(crops, out, request.param))
    assert summary["steps"] == 2 and summary["train_cpu_seconds"] > 0
    return request.param, out


def test_a_cpu_second_budget_stops_a_run_and_decoder_mode_can_skip_the_cache(crops, tmp_path):
    """max_cpu_seconds 0: validated and saved without a step; use_cache False: no tile is embedded up front."""
    out = tmp_path / "run"
    summary = finetune(_cfg(crops, out, "decoder", train_decoder=False, use_cache=False, max_cpu_seconds=0.0,
                            epochs=50))
    assert summary["stopped"] == "max_seconds" and summary["steps"] == 0 and summary["epochs_done"] == 1
    assert summary["train_cpu_seconds"] < 1.0 and (out / "best.pt").is_file()
    assert summary["cache"] is None and not (out / "embeddings").exists()


def test_validations_are_not_counted_in_the_step_budget(crops, tmp_path):
    """Two validated epochs: their CPU seconds are reported apart and left out of train_cpu_seconds, the count
    max_cpu_seconds stops on (a run validated often gets as many steps as one validated once)."""
    import time

    c0 = time.process_time()
    summary = finetune(_cfg(crops, tmp_path / "run", "decoder", train_decoder=False, use_cache=False,
                            val_fraction=0.5, epochs=2, validate_every=1))
    total = time.process_time() - c0
    assert summary["steps"] == 2 and summary["validate_cpu_seconds"] > 0
    assert summary["train_cpu_seconds"] > 0
    assert summary["train_cpu_seconds"] + summary["validate_cpu_seconds"] <= total + 0.05


def _intended(name: str) -> bool:
    return name.startswith(("prompt_encoder.", "mask_decoder.")) or is_peft_parameter(name)


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_one_training_step_moves_only_the_decoder_and_the_peft_weights(mode, crops, tmp_path):
    cfg = _cfg(crops, tmp_path / "run", mode)
    prepared = prepare(cfg, parse_modes(cfg.prompts), Path(cfg.out), torch.device("cpu"), 0, 1)
    model = prepared.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if _intended(n)}
    trainer = Trainer(prepared)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = epoch_batches(prepared.train_tiles, cfg, 0)
    trainer.step(batches, 0, len(batches))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(_intended(k) for k in changed)  # the encoder's base weights and BN buffers stay
    grown = "adapter.up.weight" if mode == "adapter" else "lora_b"
    assert any(k.endswith(grown) for k in changed)  # the zero-initialised half moved
    assert any(k.startswith("mask_decoder.") for k in changed)


def test_checkpoint_stores_the_trained_parts_apart_and_the_base_sha256(run, tmp_path):
    mode, out = run
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    keys = set(ckpt["model"])
    assert keys and all(_intended(k) for k in keys)  # no base encoder weight is stored
    peft = [k for k in keys if is_peft_parameter(k)]
    assert len(peft) == (10 * 4 if mode == "adapter" else 10 * 2 * 2)  # 10 blocks: down/up w+b; qkv,proj A+B
    assert ckpt["base_model"] == "litemedsam"
    assert ckpt["base_sha256"] == get_spec("litemedsam").sha256 and len(ckpt["base_sha256"]) == 64
    assert ckpt["recipe"]["mode"] == mode and ckpt["recipe"]["train_decoder"] is True

    ckpt["base_sha256"] = "0" * 64  # fine-tuned from other base weights: refused in one line
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(InputError, match="sha256 differs"):
        load_finetuned(tmp_path / "other.pt")


def test_the_run_loads_in_evaluate_and_annotate(run, crops, tmp_path):
    from click.testing import CliRunner

    from medsamkit.annotate.session.config import AnnotateConfig
    from medsamkit.annotate.session.workspace import Workspace
    from medsamkit.cli import main
    from medsamkit.models.checkpoints import sha256_of

    mode, out = run
    result = CliRunner().invoke(main, ["evaluate", "--data", str(crops), "--model", str(out / "best.pt"),
                                       "--out", str(tmp_path / "ev"), "--prompts", "box,center", "--max-images",
                                       "1", "--max-objects", "2", "--no-baseline", "--no-figures"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    rows = {r["mode"]: r for r in summary["table"] if r["method"] == "model"}
    assert set(rows) == {"box", "center"} and rows["box"]["dice"]["mean"] > 0.5

    ws = Workspace(AnnotateConfig(str(crops), out=str(tmp_path / "ann"), model=str(out)))  # a run folder
    info = ws.info()
    assert info.point_prompts and info.model["checkpoint_sha256"] == sha256_of(out / "best.pt")
    served = ws.segmenter.model
    assert served.finetuned_from == str(out / "best.pt")
    assert not any(isinstance(m, LoRALinear) for m in served.modules())  # LoRA served merged
    assert any(is_peft_parameter(n) for n, _ in served.named_parameters()) == (mode == "adapter")


def test_lora_merged_into_the_weights_gives_the_unmerged_forward():
    """Real LiteMedSAM encoder, LoRA (rank 4, qkv and proj) with trained-size weights: merged within 1e-5."""
    torch.manual_seed(0)
    model = load_model("litemedsam")
    image = next(open_dataset("builtin:dsb-nuclei").cases()).image
    x, _ = preprocess(model.preprocessing, as_rgb_float(image))
    n_base = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        base = model.encode(x)
        add_lora(model.image_encoder, rank=4, alpha=8.0, targets=("qkv", "proj"))
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0.0, 0.02)
        unmerged = model.encode(x)
        assert merge_lora(model.image_encoder) == 20  # 10 blocks x (qkv, proj)
        merged = model.encode(x)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == n_base  # merged: the base model's size and layers
    assert (unmerged - base).abs().max() > 1e-2  # the LoRA weights really change the output
    assert (merged - unmerged).abs().max() < 1e-5


def test_loading_merges_lora_and_matches_the_trained_model(run, crops):
    """The loaded (merged) run predicts what the run's model, rebuilt unmerged, predicts."""
    from medsamkit.predictor import Predictor

    mode, out = run
    if mode != "lora":
        pytest.skip("LoRA only")
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    unmerged = load_model("litemedsam")
    apply_recipe(unmerged, ckpt["recipe"])
    unmerged.load_state_dict(ckpt["model"], strict=False)
    loaded = load_model(str(out / "best.pt"))
    image = np.asarray(Image.open(crops / "images" / "c0.png"))
    boxes = np.array([[10, 10, 60, 60], [40, 30, 110, 100]], dtype=np.float32)
    a = Predictor(unmerged.eval()).set_image(image).predict(boxes=boxes)
    b = Predictor(loaded).set_image(image).predict(boxes=boxes)
    assert np.allclose(a.low_res_logits, b.low_res_logits, atol=1e-4)
    assert np.abs(a.masks != b.masks).mean() < 1e-3
