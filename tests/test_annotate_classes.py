"""Class suggestions from a fine-tuned class head: a one-epoch class-head run (two real DSB crop sets, as
tests/test_finetune.py makes them) loaded by `annotate --model RUN`; predict proposes a class with its
probability, a commit without a class takes it, and the record names the run's checkpoint sha256; trained
with clicks, the run takes point prompts without a box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medsamkit.annotate.http.app import create_app  # noqa: E402
from medsamkit.annotate.model.segmenter import Segmenter  # noqa: E402
from medsamkit.annotate.session.config import AnnotateConfig  # noqa: E402
from medsamkit.annotate.session.workspace import Workspace  # noqa: E402
from medsamkit.core.objects import extract_objects  # noqa: E402
from medsamkit.io.datasets import open_dataset  # noqa: E402
from medsamkit.models.loading import model_fingerprint  # noqa: E402
from medsamkit.training import FinetuneConfig, finetune  # noqa: E402


@pytest.fixture(scope="module")
def class_head_run(tmp_path_factory, weights_path):
    """(run folder, data root): one epoch (two steps) of a decoder + class head run on sets A and B."""
    root = tmp_path_factory.mktemp("classes")
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    lo, hi = np.percentile(case.image, [0.5, 99.5])
    u8 = (np.clip((case.image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    for name, (r, c) in {"A": (0, 0), "B": (128, 128)}.items():
        (root / name / "images").mkdir(parents=True)
        (root / name / "labels").mkdir()
        Image.fromarray(u8[r : r + 128, c : c + 128]).save(root / name / "images" / f"{name}.png")
        Image.fromarray(case.label[r : r + 128, c : c + 128].astype(np.uint16)).save(
            root / name / "labels" / f"{name}.png")
    run = root / "run"
    torch.manual_seed(0)
    finetune(FinetuneConfig(data=[str(root / "A"), str(root / "B")], out=str(run), prompts="box,iter2", class_head=True,
                            epochs=1, batch_size=1, max_objects=1, val_fraction=0.0,
                            cache=str(root / "cache"), device="cpu", show_progress=False))
    return run, root


def test_class_head_suggests_and_commit_takes_the_suggestion(class_head_run, tmp_path):
    run, root = class_head_run
    segmenter = Segmenter.load(str(run), None, "cpu", tmp_path / "embeddings")
    ws = Workspace(AnnotateConfig(str(root / "A"), out=str(tmp_path / "out"), model=str(run)), segmenter)
    client = TestClient(create_app(ws, None), base_url="http://127.0.0.1")
    info = client.get("/api/info").json()
    assert info["class_head"] is True and info["classes"] == ["A", "B"]
    assert info["model"]["checkpoint_sha256"] == model_fingerprint(str(run))
    obj = extract_objects(np.asarray(Image.open(root / "A" / "labels" / "A.png")))[0]
    reply = client.post("/api/predict", json={"image": "A", "box": obj.box().tolist()}).json()
    suggestion = reply["class_suggestion"]
    assert suggestion["class"] in ("A", "B") and set(suggestion["probabilities"]) == {"A", "B"}
    assert sum(suggestion["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert suggestion["probability"] == max(suggestion["probabilities"].values())
    committed = client.post("/api/commit", json={"image": "A"}).json()["committed"]
    assert committed["class"] == suggestion["class"] == committed["suggested_class"]
    assert committed["suggested_probability"] == suggestion["probability"]
    assert committed["checkpoint_sha256"] == model_fingerprint(str(run)) and committed["model"] == str(run)
    # trained with clicks, the run answers points without a box (LiteMedSAM alone refuses them)
    assert info["point_prompts"] is True and "points" in info["prompts"]
    cx, cy = (obj.box()[:2] + obj.box()[2:]) / 2
    points_only = client.post("/api/predict", json={"image": "A", "points": [[float(cx), float(cy), 1]]})
    assert points_only.status_code == 200 and "class_suggestion" in points_only.json()
    bad = client.post("/api/objects/update", json={"image": "A", "object": committed["id"], "class": "C"})
    assert bad.status_code == 400 and "unknown class" in bad.json()["error"]
