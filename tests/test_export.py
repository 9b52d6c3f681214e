"""ONNX export (`medsamkit export`) and the onnxruntime backend: its masks agree with torch's on a real image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medsamkit.core.errors import InputError
from medsamkit.core.objects import extract_objects
from medsamkit.io.images import read_image, read_label
from medsamkit.models.onnx_backend import OnnxSamModel, prompt_arrays
from medsamkit.predictor import Predictor

pytest.importorskip("onnxruntime")

MIN_AGREEMENT = 0.999


@pytest.fixture(scope="module")
def exported(tmp_path_factory, litemedsam):
    """The bundled LiteMedSAM exported through the CLI command into a temporary folder."""
    from medsamkit.cli.export import export

    out = tmp_path_factory.mktemp("onnx")
    res = CliRunner().invoke(export, ["--model", "litemedsam", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tile(monuseg_root):
    name = sorted((monuseg_root / "test" / "images").iterdir())[1].name
    image = read_image(monuseg_root / "test" / "images" / name)[256:512, 256:512]
    label = read_label(monuseg_root / "test" / "labels" / name)[256:512, 256:512]
    return image, np.stack([o.box() for o in extract_objects(label, "instance", 20, 0.0)])[:6]


def test_export_files_and_metadata(exported):
    out, info = exported
    assert (out / "encoder.onnx").stat().st_size > 10_000_000  # 5.7M float32 weights: > 20 MB
    assert (out / "decoder.onnx").stat().st_size > 10_000_000
    meta = json.loads((out / "export.json").read_text())
    assert meta["model"] == info["model"] == "litemedsam"
    assert meta["embedding_shape"] == [256, 64, 64]
    assert meta["mask_input_size"] == [256, 256]
    assert meta["preprocessing"] == {"input_size": 256, "resize": "longest", "normalize": "minmax",
                                     "interpolation": "area"}


def test_onnxruntime_masks_agree_with_torch(exported, litemedsam, tile):
    image, boxes = tile
    ref = Predictor(litemedsam).set_image(image)
    ort = Predictor(OnnxSamModel.load(exported[0], threads=2)).set_image(image)
    assert ort.embedding.features.shape == (1, 256, 64, 64)
    assert (ort.embedding.features - ref.embedding.features).abs().max().item() < 1e-3
    centres = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2
    first = ref.predict(boxes=boxes)
    for kwargs in ({"boxes": boxes}, {"boxes": boxes, "multimask": True},
                   {"points": centres, "point_labels": np.ones((len(boxes), 1))},
                   {"boxes": boxes, "mask_input": first.low_res_logits}):
        a, b = ref.predict(**kwargs), ort.predict(**kwargs)
        assert a.masks.shape == b.masks.shape
        assert (a.masks == b.masks).mean() >= MIN_AGREEMENT, list(kwargs)
        assert np.abs(a.iou - b.iou).max() < 1e-3
    assert first.masks[:, 0].sum(axis=(1, 2)).min() > 0  # every nucleus found, not empty outputs


def test_prompt_arrays_token_order():
    """Points first (padded by one -1 point when there is no box), then the box corners labelled 2 and 3."""
    pts = (torch.tensor([[[5.0, 6.0]]]), torch.tensor([[1]]))
    box = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    c, lab = prompt_arrays(pts, None)
    assert c.tolist() == [[[5.0, 6.0], [0.0, 0.0]]] and lab.tolist() == [[1.0, -1.0]]
    c, lab = prompt_arrays(pts, box)
    assert c.tolist() == [[[5.0, 6.0], [1.0, 2.0], [30.0, 40.0]]] and lab.tolist() == [[1.0, 2.0, 3.0]]
    c, lab = prompt_arrays(None, box)
    assert c.tolist() == [[[1.0, 2.0], [30.0, 40.0]]] and lab.tolist() == [[2.0, 3.0]]


def test_missing_export_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="export.json"):
        OnnxSamModel.load(tmp_path)
