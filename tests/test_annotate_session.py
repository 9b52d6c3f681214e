"""A simulated user through the API: Mazurowski's corrective clicks (``next_click``) on top of a box reach
exactly the masks and Dice of ``run_mode_model`` with box+iterN on the same objects, under both click
strategies (native: the previous low-res logits go back as the mask prompt; search: the kept candidate is
corrected); undoing a click answers the earlier mask again."""

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
from medsamkit.prompts.clicks import ClickAnswerer  # noqa: E402
from medsamkit.prompts.objects import object_rngs, run_mode_model  # noqa: E402
from medsamkit.prompts.simulate import Prompt  # noqa: E402

DSB = "dsb-nuclei_img2d"
MODE = parse_mode("box+iter3")
SEED = 7


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))) > 127


def _client(model, out, clicks: str) -> TestClient:
    ws = Workspace(AnnotateConfig("builtin:dsb-nuclei", out=str(out), clicks=clicks),
                   Segmenter(model, out / "embeddings", weights_identity("litemedsam", None), clicks=clicks))
    return TestClient(create_app(ws, None), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def client(litemedsam, tmp_path_factory):
    """The default: the bundled box-only model answers clicks by the search strategy."""
    return _client(litemedsam, tmp_path_factory.mktemp("session"), "auto")


@pytest.fixture(scope="module")
def native_client(litemedsam, tmp_path_factory):
    return _client(litemedsam, tmp_path_factory.mktemp("native"), "native")


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


@pytest.mark.parametrize("strategy", ["search", "native"])
def test_simulated_user_matches_run_mode_model(request, strategy, predictor):
    client = request.getfixturevalue("client" if strategy == "search" else "native_client")
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    objects = [o for o in extract_objects(case.label) if o.area >= 100][:8]
    window, key = (0, 0) + case.label.shape, name_key(case.name)
    predictor.set_image(case.image)
    # an annotator makes one object at a time: the reference runs each object in its own session
    reference = [run_mode_model(predictor, [o], window, MODE, SEED, key, clicks=strategy)[0] for o in objects]
    batched = run_mode_model(predictor, objects, window, MODE, SEED, key, clicks=strategy)
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
    # the clicks change the masks
    assert sum(not np.array_equal(g[0], g[-1]) for g in api_runs) >= len(api_runs) // 2


def test_undoing_a_click_answers_the_earlier_mask(client):
    box = [300, 300, 340, 336]
    one = client.post("/api/predict", json={"image": DSB, "box": box}).json()
    two = client.post("/api/predict", json={"image": DSB, "box": box, "points": [[320, 318, 0]]}).json()
    back = client.post("/api/predict", json={"image": DSB, "box": box}).json()
    assert two["mask_prompted"] and back["masks"] == one["masks"] and back["iou"] == one["iou"]
    assert client.post("/api/clear", json={"image": DSB}).json()["cleared"]


def test_a_chosen_candidate_feeds_its_logits_to_the_next_click(native_client, predictor):
    client = native_client
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


def test_a_chosen_candidate_is_the_one_a_search_click_corrects(client, predictor):
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    predictor.set_image(case.image)
    box, click = [200, 250, 270, 320], [236.0, 284.0, 0]
    first = client.post("/api/predict", json={"image": DSB, "box": box, "multimask": True}).json()
    other = (first["best"] + 1) % 3
    reply = client.post("/api/predict", json={"image": DSB, "box": box, "points": [click], "multimask": True,
                                              "mask_from": other}).json()
    assert reply["mask_from"] == other
    kept = decode(first["masks"][other])
    prompt = Prompt(np.array(box, np.float32), np.array([click[:2]], np.float32), np.array([0]))
    ref = ClickAnswerer(predictor, "search").answer([prompt], True, parents=[(kept, first["iou"][other])])
    assert np.array_equal(decode(reply["masks"][0]), ref.masks[0, 0])
    assert not decode(reply["masks"][0])[284, 236]  # the negative click is honoured


def test_a_click_without_a_box_gets_a_mask_on_the_box_only_model(client):
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    info = client.get("/api/info").json()
    assert info["point_prompts"] is False and info["clicks"] == "search" and "points" in info["prompts"]
    objects = [o for o in extract_objects(case.label) if o.area >= 100][:6]
    scores = []
    for obj in objects:
        truth = obj.mask(case.label.shape)
        y, x = (int(v) for v in np.argwhere(truth).mean(0))
        if not truth[y, x]:
            continue
        reply = client.post("/api/predict", json={"image": DSB, "points": [[x, y, 1]], "multimask": True})
        assert reply.status_code == 200, reply.text
        masks = [decode(m) for m in reply.json()["masks"]]
        assert all(m[y, x] for m in masks)  # every candidate holds the click
        scores.append(dice(masks[reply.json()["best"]], truth))
        client.post("/api/clear", json={"image": DSB})
    assert len(scores) >= 4 and np.median(scores) > 0.6, scores


def test_box_output_fit_reaches_the_page_from_the_config(tmp_path, lung_slice):
    """`annotate --box-output fit`: the page's box is answered by the output that fills it (the CT GTV slice, where
    the single output under-segments), and the default keeps the single output."""
    from medsamkit.io.images import to_uint8_rgb
    from medsamkit.prompts import tight_box

    image, gtv = lung_slice
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(to_uint8_rgb(image)).save(folder / "ct.png")
    box = [float(v) for v in tight_box(gtv)]
    scores = {}
    for choice in ("single", "fit"):
        ws = Workspace(AnnotateConfig(str(folder), out=str(tmp_path / choice), box_output=choice))
        assert ws.segmenter._box_output == choice
        client = TestClient(create_app(ws, None), base_url="http://127.0.0.1")
        name = client.get("/api/info").json()["images"][0]["id"]
        reply = client.post("/api/predict", json={"image": name, "box": box, "points": []}).json()
        scores[choice] = dice(decode(reply["masks"][0]), gtv)
    assert scores["fit"] > scores["single"] + 0.03
