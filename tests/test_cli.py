"""The CLI end to end in a temp dir: segment writes a mask, bad input is one line + exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from medsamkit.cli import main
from medsamkit.io.images import read_label, to_uint8_rgb, write_mask
from medsamkit.metrics import dice
from medsamkit.prompts import tight_box


@pytest.fixture()
def lung_png(tmp_path, lung_slice):
    image, gtv = lung_slice
    from PIL import Image

    path = tmp_path / "slice.png"
    Image.fromarray(to_uint8_rgb(image)[..., 0]).save(path)
    return path, gtv


def test_segment_end_to_end(tmp_path, lung_png):
    path, gtv = lung_png
    box = ",".join(str(int(v)) for v in tight_box(gtv))
    out = tmp_path / "mask.png"
    res = CliRunner().invoke(main, ["segment", str(path), "--box", box, "--box", "5,5,40,40", "-o", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.strip().splitlines()]
    assert [r["prompt"] for r in rows] == [1, 2] and all(0 < r["predicted_iou"] <= 1.2 for r in rows)
    mask = read_label(out)
    assert mask.shape == gtv.shape and mask.dtype == np.uint8
    assert dice(mask == 1, gtv) >= 0.75


def test_segment_box_output_fit_fills_the_under_segmented_gtv(tmp_path, lung_png):
    """--box-output fit: the CT slice's GTV box is answered by the output that fills it (closer to the truth)."""
    path, gtv = lung_png
    box = ",".join(str(int(v)) for v in tight_box(gtv))
    masks = {}
    for choice in ("single", "fit"):
        out = tmp_path / f"{choice}.png"
        res = CliRunner().invoke(main, ["segment", str(path), "--box", box, "--box-output", choice, "-o", str(out)])
        assert res.exit_code == 0, res.output
        masks[choice] = read_label(out) == 1
    assert dice(masks["fit"], gtv) > dice(masks["single"], gtv) + 0.03


def test_segment_bad_box_is_one_line_exit_2(tmp_path, lung_png):
    path, _ = lung_png
    res = subprocess.run(
        [sys.executable, "-m", "medsamkit", "segment", str(path), "--box", "0,0,999,10", "-o", str(tmp_path / "m.png")],
        capture_output=True, text=True,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert "slice.png: box [0.0, 0.0, 999.0, 10.0] lies outside the image (width 204, height 201)" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args,msg", [
    (["segment", "missing.png", "--box", "0,0,5,5", "-o", "x.png"], "missing.png: file not found"),
    (["segment", "img.png", "--box", "0,0,5", "-o", "x.png"], "must be x0,y0,x1,y1"),
    (["segment", "img.png", "--point", "1,2,7", "-o", "x.png"], "label 1 or 0"),
    (["segment", "img.png", "-o", "x.png"], "give at least one --box or --point"),
    (["segment", "img.png", "--box", "0,0,5,5", "--model", "nope", "-o", "x.png"], "unknown model 'nope'"),
])
def test_cli_errors(tmp_path, monkeypatch, args, msg):
    monkeypatch.chdir(tmp_path)
    write_mask(tmp_path / "img.png", np.arange(64 * 64).reshape(64, 64) % 200)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert msg in res.output


def test_models_and_datasets_listing():
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0 and "litemedsam" in res.output and "sam_vit_h" in res.output
    res = CliRunner().invoke(main, ["datasets"])
    assert res.exit_code == 0 and "builtin:lung-gtv" in res.output and "CC BY-NC 3.0" in res.output


def test_run_resumable_returns_or_exits_130_with_the_resume_hint(capsys):
    from medsamkit.cli.interrupt import run_resumable

    assert run_resumable(lambda cfg: cfg * 2, 21, "unused") == 42

    def interrupted(cfg):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        run_resumable(interrupted, None, "rerun the same command to resume from RUN/last.pt")
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted: rerun the same command to resume from RUN/last.pt"


# Each verb's flags that do not fill a config field of their name: given to build_config under another name,
# or read by the command itself (the Dask flags choose the executor).
DASK = {"workers", "threads_per_worker", "scheduler"}
CONFIGS = {
    "evaluate": (("medsamkit.evaluation.config", "EvaluateConfig"),),
    "embed": (("medsamkit.embedding.precompute", "EmbedConfig"),),
    "evaluate-volume": (("medsamkit.volumes.evaluate", "EvaluateVolumeConfig"),),
    "segment-volume": (("medsamkit.volumes.segment", "SegmentVolumeConfig"),
                       ("medsamkit.volumes.segment_many", "SegmentDatasetConfig")),
    "samaug masks": (("medsamkit.samaug.priors", "PriorsConfig"), ("medsamkit.samaug.everything", "EverythingConfig")),
    "samaug priors": (("medsamkit.samaug.priors", "PriorsConfig"), ("medsamkit.samaug.everything", "EverythingConfig")),
    "finetune": (("medsamkit.training.config", "FinetuneConfig"),),
    "unet train": (("medsamkit.samaug.unet_train", "UNetConfig"),),
    "unet eval": (("medsamkit.samaug.unet_eval", "UNetEvalConfig"),),
    "segment": (("medsamkit.segment", "SegmentConfig"),),
    "demo": (("medsamkit.evaluation.demo", "DemoConfig"),),
}
RENAMED = {"evaluate": DASK, "embed": DASK, "evaluate-volume": DASK, "segment-volume": DASK | {"volume"},
           "samaug masks": DASK | {"max_area", "point_window", "full_decoder"},
           "samaug priors": DASK | {"max_area", "point_window", "full_decoder"},
           "unet train": {"fusion"}, "unet eval": {"run_dir", "no_masks"}}


@pytest.mark.parametrize("verb", sorted(CONFIGS))
def test_every_flag_of_a_verb_reaches_its_config(verb):
    """build_config fills fields by name, so a flag whose name matches no field would be dropped silently."""
    import importlib
    from dataclasses import fields

    cmd = main
    for part in verb.split():
        cmd = cmd.commands[part]
    names = {f.name for module, cls in CONFIGS[verb] for f in fields(getattr(importlib.import_module(module), cls))}
    params = {"model" if p.name == "model_name" else p.name for p in cmd.params}
    assert params - names - RENAMED.get(verb, set()) == set()
