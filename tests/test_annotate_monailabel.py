"""The MONAI Label-compatible API (`annotate --monailabel`) driven by the `monailabel` package's own
MONAILabelClient against a real uvicorn with the real bundled LiteMedSAM: on a 2D folder (crops of
builtin:dsb-nuclei) and on builtin:lung-gtv (CT). info, next_sample, the image download, infer with
foreground and background clicks (the label file equals our own API's answer to the same clicks), upload_image,
save_label landing in the annotation folder (read back as training data), train_start / train_status running a
learn round; the requests 3D Slicer's MONAI Label module sends for a click and for a box, replayed over HTTP;
and the token in the path."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
client_module = pytest.importorskip("monailabel.client.client")  # the dev extra: pip install --no-deps monailabel
import httpx  # noqa: E402

from medsamkit.annotate.http.launch import BackgroundServer  # noqa: E402
from medsamkit.annotate.model.segmenter import Segmenter  # noqa: E402
from medsamkit.annotate.session.config import AnnotateConfig  # noqa: E402
from medsamkit.annotate.session.workspace import Workspace  # noqa: E402
from medsamkit.core.objects import extract_objects  # noqa: E402
from medsamkit.io.annotations import annotated_objects  # noqa: E402
from medsamkit.io.spec import resolve_spec  # noqa: E402
from medsamkit.metrics import dice  # noqa: E402
from medsamkit.models.loading import weights_identity  # noqa: E402

MONAILabelClient = client_module.MONAILabelClient
MONAILabelClientException = client_module.MONAILabelClientException


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))) > 127


def centre(mask: np.ndarray) -> list[int]:
    """A pixel of ``mask`` far from its edge (x, y)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(dist.argmax()), mask.shape)
    return [int(x), int(y)]


def our_answer(base: str, token: str, image: str, slice_index, points: list, client: str, box=None) -> np.ndarray:
    """Our own API's best mask for clicks sent one by one (the page's way)."""
    headers = {"Authorization": f"Bearer {token}"}
    reply = None
    for n in range(1, len(points) + 1):
        body = {"image": image, "axis": 0, "slice": slice_index, "points": points[:n], "client": client, "box": box}
        reply = httpx.post(f"{base}/api/predict", json=body, headers=headers, timeout=120).json()
    if not points:
        body = {"image": image, "axis": 0, "slice": slice_index, "points": [], "client": client, "box": box}
        reply = httpx.post(f"{base}/api/predict", json=body, headers=headers, timeout=120).json()
    return decode(reply["masks"][reply["best"]])


def read_label_file(path) -> np.ndarray:
    """A label file a client got: NIfTI as (Z, Y, X), PNG as (H, W)."""
    path = str(path)
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)
    return np.asarray(Image.open(path))


# --- 2D ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder2d(tmp_path_factory):
    """Two 256 px crops of builtin:dsb-nuclei (a.png, b.png: a plain image folder) with their nuclei, and a
    third crop to upload."""
    from medsamkit.io.datasets import open_dataset

    case = next(open_dataset("builtin:dsb-nuclei").cases())
    img = (case.image / case.image.max() * 255).astype(np.uint8)
    root = tmp_path_factory.mktemp("folder2d")
    (root / "images").mkdir()
    crops = {"a": (0, 0), "b": (256, 256), "c": (0, 256)}
    truths = {}
    for name, (y, x) in crops.items():
        where = root / ("upload" if name == "c" else "images")
        where.mkdir(exist_ok=True)
        Image.fromarray(img[y:y + 256, x:x + 256]).save(where / f"{name}.png")
        truths[name] = case.label[y:y + 256, x:x + 256]
    return root, truths


@pytest.fixture(scope="module")
def server2d(litemedsam, folder2d, tmp_path_factory):
    root, _ = folder2d
    out = tmp_path_factory.mktemp("out2d")
    cfg = AnnotateConfig(str(root / "images"), out=str(out), monailabel=True, learn_budget=8.0,
                         learn_min_objects=4)
    ws = Workspace(cfg, Segmenter(litemedsam, out / "embeddings", weights_identity("litemedsam", None)))
    with BackgroundServer(ws, token="tok-2d") as running:
        yield running, out
    ws.segmenter.close()


def test_2d_client_info_next_sample_infer_upload(server2d, folder2d, tmp_path):
    running, out = server2d
    _, truths = folder2d
    client = MONAILabelClient(running.monailabel, tmpdir=str(tmp_path), client_id="slicer-1")
    info = client.info()
    assert info["models"]["medsamkit"]["type"] == "deepgrow" and info["models"]["medsamkit"]["dimension"] == 2
    assert set(info["strategies"]) >= {"random", "first"} and info["datastore"]["total"] == 2
    sample = client.next_sample("first", {})
    assert sample["id"] == "a"
    png = httpx.get(running.monailabel.rstrip("/") + sample["url"], timeout=30)
    assert np.asarray(Image.open(io.BytesIO(png.content))).shape[:2] == (256, 256)
    assert client.next_sample("random", {})["id"] in ("a", "b")
    # a nucleus: one foreground click, then a background click beside it
    objs = sorted(extract_objects(truths["a"]), key=lambda o: -o.area)
    truth = truths["a"] == objs[0].label
    fg = centre(truth)
    bg = centre(~truth & (np.abs(np.indices(truth.shape) - np.array(fg[::-1])[:, None, None]).sum(0) < 40))
    client.infer("medsamkit", "a", {"foreground": [fg], "background": [], "label": "object"})
    label_file, params = client.infer("medsamkit", "a", {"foreground": [fg], "background": [bg], "label": "object"})
    theirs = read_label_file(label_file) > 0
    ours = our_answer(running.base, running.token, "a", None, [[*fg, 1], [*bg, 0]], "page")
    assert params["points"] == [[*fg, 1.0], [*bg, 0.0]]
    assert theirs.shape == truth.shape and np.array_equal(theirs, ours)
    assert dice(theirs, truth) == pytest.approx(dice(ours, truth)) and dice(theirs, truth) > 0.6
    # an uploaded image joins the session and answers clicks
    ident = client.upload_image(str(folder2d[0] / "upload" / "c.png"), "c.png")["image"]
    assert ident == "c" and (out / "uploads" / "c.png").is_file()
    truth_c = truths["c"] == sorted(extract_objects(truths["c"]), key=lambda o: -o.area)[0].label
    label_file, _ = client.infer("medsamkit", "c", {"foreground": [centre(truth_c)], "background": []})
    assert dice(read_label_file(label_file) > 0, truth_c) > 0.6
    assert client.datastore()["objects"]["c"]["image"]["ext"] == ".png"


def test_2d_save_label_is_training_data_and_trains_a_round(server2d, folder2d, tmp_path):
    running, out = server2d
    _, truths = folder2d
    client = MONAILabelClient(running.monailabel, tmpdir=str(tmp_path))
    for name in ("a", "b"):
        path = tmp_path / f"{name}-label.png"
        Image.fromarray((truths[name] > 0).astype(np.uint8)).save(path)
        saved = client.save_label(name, str(path), tag="final")
        assert saved["image"] == name and saved["objects"] > 3
    meta = json.loads((out / "a.json").read_text())
    assert meta["objects"][0]["source"] == "monailabel"
    objects = annotated_objects(out)
    assert set(objects) >= {"a", "b"}
    case = resolve_spec(out).open().loaders[0]()  # what `finetune --data OUT` reads
    assert case.image.shape[:2] == (256, 256) and case.label.max() == len(objects["a"])
    assert client.next_sample("first", {}).get("id") in (None, "c")  # c: the upload of the test above
    assert client.datastore()["objects"]["a"]["labels"]["final"]["ext"] == ".png"
    # the saved label comes back as a label file
    got = httpx.get(running.monailabel + "datastore/label", params={"label": "a", "tag": "final"}, timeout=30)
    assert got.status_code == 200 and (np.asarray(Image.open(io.BytesIO(got.content))) > 0).sum() == (
        truths["a"] > 0).sum()
    # a learn round through MONAI Label's train API
    assert not client.train_status(check_if_running=True)
    started = client.train_start("medsamkit", {})
    assert started["status"] == "RUNNING"
    assert client.train_status(check_if_running=True)
    deadline = time.monotonic() + 240
    status = client.train_status()
    while status["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(1)
        status = client.train_status()
    assert status["status"] == "DONE", status
    assert status["phase"] in ("updated", "kept") and status["details"]


def test_token_in_the_path(server2d):
    running, _ = server2d
    base = running.base
    assert httpx.get(f"{base}/monailabel/info/").status_code == 401
    assert httpx.get(f"{base}/monailabel/wrong/info/").status_code == 401
    assert httpx.get(f"{base}/monailabel/{running.token}/info/").status_code == 200
    assert httpx.get(f"{base}/info/").status_code == 404
    with pytest.raises(MONAILabelClientException):
        MONAILabelClient(f"{base}/monailabel/nope/").info()
    assert running.token not in httpx.get(f"{base}/openapi.json").text
