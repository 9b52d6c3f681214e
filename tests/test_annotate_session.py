"""A simulated user through the API: Mazurowski's corrective clicks (``next_click``) on top of a box reach
exactly the masks and Dice of ``run_mode_model`` with box+iterN on the same objects (the API feeds the
previous low-res logits back as the mask prompt); undoing a click answers the earlier mask again."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medsamkit.annotate.http.app import create_app  # noqa: E402
from medsamkit.annotate.model.segmenter import Segmenter  # noqa: E402
from medsamkit.annotate.session.config import AnnotateConfig  # noqa: E402
from medsamkit.annotate.session.workspace import Workspace  # noqa: E402
from medsamkit.core.objects import extract_objects  # noqa: E402
from medsamkit.core.seeds import name_key  # noqa: E402
from medsamkit.io.datasets import open_dataset  # noqa: E402
from medsamkit.metrics import dice  # noqa: E402
from medsamkit.models.loading import weights_identity  # noqa: E402
from medsamkit.prompts import next_click, parse_mode  # noqa: E402
from medsamkit.prompts.objects import object_rngs, run_mode_model  # noqa: E402

DSB = "dsb-nuclei_img2d"
MODE = parse_mode("box+iter3")
SEED = 7


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))) > 127


@pytest.fixture(scope="module")
def client(litemedsam, tmp_path_factory):
    out = tmp_path_factory.mktemp("session")
    ws = Workspace(AnnotateConfig("builtin:dsb-nuclei", out=str(out)),
                   Segmenter(litemedsam, out / "embeddings", weights_identity("litemedsam", None)))
    return TestClient(create_app(ws, None), base_url="http://127.0.0.1")


def _user_clicks(client, objects, truths, rngs) -> list[list[np.ndarray]]:
    """Per object, the masks a user gets who drags the tight box, then clicks where the error is largest."""
    runs = []
    for obj, truth, rng in zip(objects, truths, rngs):
        client.post("/api/clear", json={"image": DSB})
        box, points, masks = obj.box().tolist(), [], []
        for step in range(MODE.n_steps):
            reply = client.post("/api/predict", json={"image": DSB, "box": box, "points": points}).json()
            assert reply["mask_prompted"] is (step > 0)
            masks.append(decode(reply["masks"][0]))
            if step + 1 == MODE.n_steps:
                break
            click = next_click(masks[-1], truth, rng)
            if click is None:
                break
            (x, y), label = click
            points = points + [[float(x), float(y), int(label)]]
        runs.append(masks)
    return runs


def test_simulated_user_matches_run_mode_model(client, predictor):
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    objects = [o for o in extract_objects(case.label) if o.area >= 100][:8]
    window, key = (0, 0) + case.label.shape, name_key(case.name)
    predictor.set_image(case.image)
    # an annotator makes one object at a time: the reference runs each object in its own session
    reference = [run_mode_model(predictor, [o], window, MODE, SEED, key)[0] for o in objects]
    batched = run_mode_model(predictor, objects, window, MODE, SEED, key)
    truths = [o.mask(case.label.shape) for o in objects]
    api_runs = _user_clicks(client, objects, truths, object_rngs(objects, MODE, SEED, key))
    for ref, got in zip(reference, api_runs):
        kept = [s.mask for s in ref.steps if not s.repeated]
        assert len(kept) == len(got)
        for a, b in zip(kept, got):
            assert np.array_equal(a, b)
    api_dice = [dice(g[-1], t) for g, t in zip(api_runs, truths)]
    assert api_dice == [dice(r.masks[-1], t) for r, t in zip(reference, truths)]
    # batching 8 prompts changes float rounding only (a pixel or so on an object)
    np.testing.assert_allclose(api_dice, [dice(r.masks[-1], t) for r, t in zip(batched, truths)], atol=2e-3)
    # the clicks reach the model (LiteMedSAM is box-only: on these nuclei they make the masks worse)
    assert sum(not np.array_equal(g[0], g[-1]) for g in api_runs) >= len(api_runs) // 2


def test_undoing_a_click_answers_the_earlier_mask(client):
    box = [300, 300, 340, 336]
    one = client.post("/api/predict", json={"image": DSB, "box": box}).json()
    two = client.post("/api/predict", json={"image": DSB, "box": box, "points": [[320, 318, 0]]}).json()
    back = client.post("/api/predict", json={"image": DSB, "box": box}).json()
    assert two["mask_prompted"] and back["masks"] == one["masks"] and back["iou"] == one["iou"]
    assert client.post("/api/clear", json={"image": DSB}).json()["cleared"]


def test_a_chosen_candidate_feeds_its_logits_to_the_next_click(client, predictor):
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    predictor.set_image(case.image)
    box, click = [200, 250, 270, 320], [236.0, 284.0, 1]
    first = client.post("/api/predict", json={"image": DSB, "box": box, "multimask": True}).json()
    other = (first["best"] + 1) % 3
    reply = client.post("/api/predict", json={"image": DSB, "box": box, "points": [click], "multimask": True,
                                              "mask_from": other}).json()
    assert reply["mask_from"] == other
    logits = predictor.predict(boxes=np.array(box), multimask=True).low_res_logits[0, other]
    ref = predictor.predict(boxes=np.array(box), points=np.array([click[:2]]), point_labels=np.array([1]),
                            mask_input=logits[None, None], multimask=True)
    for k in range(3):
        assert np.array_equal(decode(reply["masks"][k]), ref.masks[0, k])
    bad = client.post("/api/predict", json={"image": DSB, "box": box, "points": [click], "multimask": True,
                                            "mask_from": 5})
    assert bad.status_code == 400 and "mask_from" in bad.json()["error"]
