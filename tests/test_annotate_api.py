"""The annotation server's HTTP API on real data and the real LiteMedSAM: masks equal the Predictor's and
`segment`'s for the same box, commits round-trip through the saved files, the token and the documented
4xx answers hold, nothing is written outside --out."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medsamkit.annotate.http.app import create_app  # noqa: E402
from medsamkit.annotate.model.segmenter import Segmenter  # noqa: E402
from medsamkit.annotate.session.config import AnnotateConfig  # noqa: E402
from medsamkit.annotate.session.views import box_view  # noqa: E402
from medsamkit.annotate.session.workspace import Workspace  # noqa: E402
from medsamkit.core.objects import extract_objects  # noqa: E402
from medsamkit.core.tiling import to_window_coords  # noqa: E402
from medsamkit.io.datasets import open_dataset  # noqa: E402
from medsamkit.metrics import dice  # noqa: E402
from medsamkit.models.loading import weights_identity  # noqa: E402

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DSB = "dsb-nuclei_img2d"


def decode(b64: str) -> np.ndarray:
    """A mask PNG from the API as a boolean array."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))) > 127


@pytest.fixture(scope="module")
def dsb_case():
    return next(open_dataset("builtin:dsb-nuclei").cases())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture
def make_client(litemedsam, cache_dir, tmp_path):
    """A TestClient over a fresh workspace of ``source`` (out: tmp_path/out, None: the default)."""

    def make(source: str = "builtin:dsb-nuclei", out="tmp", token: str | None = TOKEN, **kw) -> TestClient:
        out = str(tmp_path / "out") if out == "tmp" else (None if out is None else str(out))
        segmenter = Segmenter(litemedsam, cache_dir, weights_identity("litemedsam", None))
        ws = Workspace(AnnotateConfig(source, out=out, **kw), segmenter)
        return TestClient(create_app(ws, token), base_url="http://127.0.0.1")

    return make


@pytest.fixture
def nuclei_folder(tmp_path, dsb_case):
    """A plain folder: one 8-bit PNG crop of the DSB image and its labels/ crop."""
    folder = tmp_path / "folder"
    (folder / "labels").mkdir(parents=True)
    img = dsb_case.image[:192, :192].astype(np.float32)
    u8 = (np.clip((img - img.min()) / (np.percentile(img, 99.5) - img.min()), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(u8).save(folder / "cells.png")
    Image.fromarray(dsb_case.label[:192, :192].astype(np.uint16)).save(folder / "labels" / "cells.png")
    return folder


def _objects(label, n):
    objs = [o for o in extract_objects(label) if o.area >= 100]
    return objs[:n]


def test_box_masks_equal_the_predictor_and_segment(make_client, dsb_case, predictor, tmp_path):
    client = make_client()
    info = client.get("/api/info", headers=AUTH).json()
    assert info["images"] == [{"id": DSB, "name": "dsb-nuclei/img2d", "kind": "image", "shape": [512, 512]}]
    assert info["model"]["checkpoint_sha256"] and info["point_prompts"] is False
    assert client.post("/api/open", json={"image": DSB}, headers=AUTH).json()["ready"] is True
    predictor.set_image(dsb_case.image)
    objs = _objects(dsb_case.label, 6)
    api_dice, ref_dice = [], []
    for obj in objs:
        box = obj.box().tolist()
        reply = client.post("/api/predict", json={"image": DSB, "box": box}, headers=AUTH).json()
        mask = decode(reply["masks"][0])
        ref = predictor.predict(boxes=np.array(box)).masks[0, 0]
        truth = obj.mask(dsb_case.label.shape)
        assert mask.shape == truth.shape and np.array_equal(mask, ref)
        api_dice.append(dice(mask, truth))
        ref_dice.append(dice(ref, truth))
    assert api_dice == ref_dice and np.mean(api_dice) > 0.5
    multi = client.post("/api/predict", json={"image": DSB, "box": objs[0].box().tolist(), "multimask": True},
                        headers=AUTH).json()
    assert len(multi["masks"]) == len(multi["iou"]) == 3 and 0 <= multi["best"] < 3

    from medsamkit.segment import SegmentConfig, segment_image

    np.save(tmp_path / "img.npy", dsb_case.image)
    segment_image(SegmentConfig(image=str(tmp_path / "img.npy"), out=str(tmp_path / "seg.png"),
                                boxes=[objs[0].box().tolist()], device="cpu"))
    seg = np.asarray(Image.open(tmp_path / "seg.png")) > 0
    first = client.post("/api/predict", json={"image": DSB, "box": objs[0].box().tolist()}, headers=AUTH).json()
    assert np.array_equal(decode(first["masks"][0]), seg)


def test_monuseg_image_box_matches_the_predictor(monuseg_root, make_client, predictor, tmp_path):
    from medsamkit.io.images import read_image, read_label

    src = sorted((monuseg_root / "test" / "images").iterdir())[0]
    folder = tmp_path / "monuseg"
    (folder / "labels").mkdir(parents=True)
    (folder / src.name).write_bytes(src.read_bytes())
    (folder / "labels" / src.name).write_bytes((monuseg_root / "test" / "labels" / src.name).read_bytes())
    client = make_client(str(folder), prefetch=False)  # the tiles' background embedding: test_annotate_views
    image_id = client.get("/api/info", headers=AUTH).json()["images"][0]["id"]
    label = read_label(folder / "labels" / src.name)
    image = read_image(folder / src.name)
    for obj in _objects(label, 3):
        # the box is answered on the evaluate rule's view of the object (annotate.views), pasted back
        y0, x0, y1, x1 = window = box_view(obj.box(), image.shape[:2], 256)
        predictor.set_image(image[y0:y1, x0:x1])
        expected = np.zeros(image.shape[:2], bool)
        expected[y0:y1, x0:x1] = predictor.predict(boxes=to_window_coords(obj.box(), window)).masks[0, 0]
        reply = client.post("/api/predict", json={"image": image_id, "box": obj.box().tolist()}, headers=AUTH)
        assert np.array_equal(decode(reply.json()["masks"][0]), expected)


def test_commit_save_reload_round_trip_and_undo(make_client, nuclei_folder):
    client = make_client(str(nuclei_folder), out=None, class_names=["nucleus", "debris"])
    out = nuclei_folder / "annotations"
    info = client.get("/api/info", headers=AUTH).json()
    assert info["out"] == str(out.resolve()) and info["classes"] == ["nucleus", "debris"]
    existing = client.get("/api/objects/cells", headers=AUTH).json()["objects"]
    assert existing and all(o["class"] == "nucleus" for o in existing)  # labels/ loaded as editable objects
    box = [20, 30, 90, 100]
    client.post("/api/predict", json={"image": "cells", "box": box}, headers=AUTH)
    client.post("/api/predict", json={"image": "cells", "box": box, "points": [[50, 60, 1]]}, headers=AUTH)
    reply = client.post("/api/commit", json={"image": "cells", "class": "debris"}, headers=AUTH).json()
    new = reply["committed"]
    assert new["class"] == "debris" and new["clicks"] == 2 and new["prompt"]["points"] == [[50.0, 60.0]]
    assert new["checkpoint_sha256"] and new["model"] == "litemedsam" and new["seconds"] >= 0
    saved = np.asarray(Image.open(out / "cells.png"))
    assert saved.dtype == np.uint16 and (saved == new["id"]).sum() == new["area"] > 0
    classes = np.asarray(Image.open(out / "cells.classes.png"))
    assert set(np.unique(classes[saved == new["id"]])) == {2}  # debris = second class
    record = json.loads((out / "cells.json").read_text())
    assert [o["id"] for o in record["objects"]] == [o["id"] for o in reply["objects"]]

    client2 = make_client(str(nuclei_folder), out=None, class_names=["nucleus", "debris"])
    again = client2.get("/api/objects/cells", headers=AUTH).json()["objects"]
    assert again == reply["objects"]
    labels = client2.get("/api/labels/cells", headers=AUTH)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(labels.content))), saved)
    assert client2.get("/api/info", headers=AUTH).json()["current"] == "cells"

    undone = client2.post("/api/undo", json={"image": "cells"}, headers=AUTH).json()
    assert undone["undone"] is None  # undo history is per launch; a fresh launch has nothing to undo
    client.post("/api/objects/update", json={"image": "cells", "object": new["id"], "hidden": True}, headers=AUTH)
    client.post("/api/objects/delete", json={"image": "cells", "object": new["id"]}, headers=AUTH)
    assert not (np.asarray(Image.open(out / "cells.png")) == new["id"]).any()
    client.post("/api/undo", json={"image": "cells"}, headers=AUTH)  # undo the delete
    back = np.asarray(Image.open(out / "cells.png"))
    assert np.array_equal(back, saved)
    after = client.post("/api/undo", json={"image": "cells"}, headers=AUTH).json()  # undo hide
    assert after["undone"] == "update" and not [o for o in after["objects"] if o["id"] == new["id"]][0]["hidden"]
    client.post("/api/undo", json={"image": "cells"}, headers=AUTH)  # undo the commit
    restored = np.asarray(Image.open(out / "cells.png"))
    assert not (restored == new["id"]).any()
    redo = client.post("/api/redo", json={"image": "cells"}, headers=AUTH).json()
    assert redo["redone"] == "commit" and np.array_equal(np.asarray(Image.open(out / "cells.png")) > 0, saved > 0)
    written = {p.relative_to(nuclei_folder).as_posix() for p in nuclei_folder.rglob("*") if p.is_file()}
    assert {w for w in written if not w.startswith("annotations/")} == {"cells.png", "labels/cells.png"}


def test_token_is_required(make_client):
    client = make_client()
    assert client.get("/api/info").status_code == 401
    assert client.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    bad = client.post("/api/predict", json={"image": DSB, "box": [1, 1, 9, 9]})
    assert bad.status_code == 401 and list(bad.json()) == ["error"]
    assert client.get(f"/api/info?token={TOKEN}").status_code == 200
    assert client.get("/api/info", headers=AUTH).status_code == 200
    assert client.get("/").status_code == 200 and b"annotate.js" in client.get("/").content
    schema = client.get("/openapi.json").json()  # the API documents itself at /docs
    assert {"/api/info", "/api/predict", "/api/commit", "/api/undo"} <= set(schema["paths"])
    assert "Bearer TOKEN" in schema["info"]["description"] and client.get("/docs").status_code == 200
    open_client = make_client(token=None)
    assert open_client.get("/api/info").status_code == 200


@pytest.mark.parametrize(("path", "status"), [
    ("/api/image/..%2F..%2F..%2Fetc%2Fpasswd", 404), ("/api/image/../../etc/passwd", 404),
    ("/api/labels/..%2Fimages%2Fimg2d", 404), ("/api/objects/%2Fetc%2Fpasswd", 404),
    ("/static/..%2F..%2Fpyproject.toml", 404), ("/static/../server.py", 404), ("/static/server.py", 404),
    (f"/api/image/{DSB}?contrast=nope", 400), (f"/api/image/{DSB}?slice=2", 400),
])
def test_paths_outside_the_images_are_not_found(make_client, path, status):
    res = make_client().get(path, headers=AUTH)
    assert res.status_code == status
    if res.headers["content-type"].startswith("application/json"):
        assert list(res.json()) == ["error"] and "\n" not in res.json()["error"]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"image": "nope", "box": [1, 1, 9, 9]}, 404, "nope"),
    ({"image": DSB, "box": [0, 0, 900, 10]}, 400, "outside the image"),
    ({"image": DSB, "box": [-5, 0, 10, 10]}, 400, "outside the image"),
    ({"image": DSB, "box": [20, 20, 10, 10]}, 400, "inverted"),
    ({"image": DSB, "box": [1, 2, 3]}, 400, "box"),
    ({"image": DSB, "slice": 3, "box": [1, 1, 9, 9]}, 400, "slice"),
    ({"image": DSB, "axis": 2, "box": [1, 1, 9, 9]}, 400, "axis"),
    ({"image": DSB, "box": [1, 1, 30, 30], "points": [[600, 5, 1]]}, 400, "outside the image"),
    ({"image": DSB, "box": [1, 1, 30, 30], "points": [[5, 5, 7]]}, 400, "labels"),
    ({"image": DSB}, 400, "no prompt"),
    ({"box": [1, 1, 9, 9]}, 400, "image"),
])
def test_bad_predict_requests_are_one_line_4xx(make_client, body, status, words):
    res = make_client().post("/api/predict", json=body, headers=AUTH)
    assert res.status_code == status, res.text
    err = res.json()
    assert list(err) == ["error"] and words in err["error"] and "Traceback" not in res.text


def test_malformed_json_and_bad_commits(make_client):
    client = make_client()
    res = client.post("/api/predict", content=b'{"image": ', headers={**AUTH, "Content-Type": "application/json"})
    assert res.status_code == 400 and res.json() == {"error": "malformed JSON body"}
    nothing = client.post("/api/commit", json={"image": DSB}, headers=AUTH)
    assert nothing.status_code == 400 and "prompt the model first" in nothing.json()["error"]
    client.post("/api/predict", json={"image": DSB, "box": [100, 100, 140, 140]}, headers=AUTH)
    assert client.post("/api/commit", json={"image": DSB, "candidate": 5}, headers=AUTH).status_code == 400
    assert client.post("/api/objects/delete", json={"image": DSB, "object": 99999}, headers=AUTH).status_code == 404


def test_everything_proposals_accept_and_reject(make_client, nuclei_folder, tmp_path):
    (nuclei_folder / "labels" / "cells.png").unlink()
    client = make_client(str(nuclei_folder), out=tmp_path / "ann")
    res = client.post("/api/everything", json={"image": "cells"}, headers=AUTH).json()
    proposals = res["proposals"]
    assert len(proposals) >= 5
    first = proposals[0]
    crop = decode(first["mask"])
    x0, y0, x1, y1 = first["box"]
    assert crop.shape == (y1 - y0 + 1, x1 - x0 + 1) and crop.any()
    accepted = client.post("/api/proposals/accept", json={"image": "cells", "indices": [0, 1]}, headers=AUTH).json()
    assert len(accepted["accepted"]) == 2 and len(accepted["objects"]) == 2
    label = np.asarray(Image.open(tmp_path / "ann" / "cells.png"))
    assert np.array_equal(label[y0 : y1 + 1, x0 : x1 + 1] == accepted["accepted"][0], crop)
    again = client.post("/api/proposals/accept", json={"image": "cells", "indices": [0]}, headers=AUTH)
    assert again.status_code == 400
    left = client.post("/api/proposals/reject", json={"image": "cells", "indices": None}, headers=AUTH).json()
    assert left["left"] == 0
