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
import os
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
try:  # `make install` puts it there (pip install --no-deps monailabel; requests from the dev extra)
    from monailabel.client import client as client_module
except ImportError:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("the monailabel client is not installed (make install)", allow_module_level=True)
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

PER_IMAGE = 6  # nuclei saved per image for the learn round (a short round: few objects to validate)
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
    # the automatic model: everything mode's objects as one label
    assert info["models"]["medsamkit_everything"]["type"] == "segmentation"
    label_file, params = client.infer("medsamkit_everything", "b", {})
    found = read_label_file(label_file) > 0
    assert dice(found, truths["b"] > 0) > 0.7  # 0.815 when written


def test_2d_save_label_is_training_data_and_trains_a_round(server2d, folder2d, tmp_path):
    running, out = server2d
    _, truths = folder2d
    client = MONAILabelClient(running.monailabel, tmpdir=str(tmp_path))
    for name in ("a", "b"):  # the largest nuclei as one class (what Slicer saves): each becomes an object
        path = tmp_path / f"{name}-label.png"
        largest = sorted(extract_objects(truths[name]), key=lambda o: -o.area)[:PER_IMAGE]
        Image.fromarray(np.isin(truths[name], [o.label for o in largest]).astype(np.uint8)).save(path)
        saved = client.save_label(name, str(path), tag="final")
        assert saved["image"] == name and saved["objects"] == PER_IMAGE
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
    assert got.status_code == 200
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(got.content))), resolve_spec(out).open().loaders[0]().label)
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
    stats = client.info()["train_stats"]["medsamkit"]  # what Slicer's progress and accuracy bars read
    assert stats["total_time"] > 0 and 0 < stats["best_metric"] <= 1


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


# --- volumes: builtin:lung-gtv ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server3d(litemedsam, tmp_path_factory):
    pytest.importorskip("cerr")  # builtin:lung-gtv data
    out = tmp_path_factory.mktemp("out3d")
    ws = Workspace(AnnotateConfig("builtin:lung-gtv", out=str(out), monailabel=True),
                   Segmenter(litemedsam, out / "embeddings", weights_identity("litemedsam", None)))
    with BackgroundServer(ws, token="tok-3d") as running:
        yield running, ws, out
    ws.segmenter.close()


def gtv_view(ws: Workspace, vid: str) -> tuple[int, np.ndarray]:
    """The GTV's largest slice and its mask (the SPEC's label: the volume's first object)."""
    truth = ws.state(vid).label > 0
    k = int(truth.sum((1, 2)).argmax())
    return k, truth[k]


def slicer_infer(url: str, image: str, params: dict) -> httpx.Response:
    """POST /infer as Slicer's module sends it (MONAILabelClient.infer: a multipart form holding only the
    ``params`` field, with that client's boundary)."""
    limit = "----------lImIt_of_THE_fIle_eW_$"
    body = (f"--{limit}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n"
            f"--{limit}--\r\n\r\n").encode()
    return httpx.post(f"{url}infer/medsamkit", params={"image": image}, content=body, timeout=120,
                      headers={"content-type": f"multipart/form-data; boundary={limit}"})


def multipart_label(reply: httpx.Response) -> np.ndarray:
    """The label file of an infer answer (multipart: params + file), read like the client (NIfTI)."""
    import email

    msg = email.message_from_bytes(b"Content-Type: " + reply.headers["content-type"].encode() + b"\r\n\r\n"
                                   + reply.content)
    parts = {p.get_param("name", header="content-disposition"): p for p in msg.get_payload()}
    import gzip

    import nibabel as nib

    data = gzip.decompress(parts["image"].get_payload(decode=True))
    image = nib.Nifti1Image.from_bytes(data)
    return np.asarray(image.dataobj).transpose(2, 1, 0), json.loads(parts["params"].get_payload(decode=True))


def test_volume_client_infer_matches_our_api_and_slicer_replay(server3d, tmp_path):
    running, ws, out = server3d
    client = MONAILabelClient(running.monailabel, tmpdir=str(tmp_path), client_id="slicer")
    info = client.info()
    assert info["datastore"]["total"] == len(ws.source.ids) and list(info["models"]) == ["medsamkit"]
    assert info["models"]["medsamkit"]["dimension"] == 2
    vid = client.next_sample("first", {})["id"]
    assert vid == ws.source.ids[0]
    k, truth = gtv_view(ws, vid)
    # the image a client downloads is the volume on its grid: NIfTI voxel (i, j, k) = our (x, y, slice)
    import nibabel as nib

    got = httpx.get(running.monailabel.rstrip("/") + f"/datastore/image?image={vid}", timeout=120)
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(got.content)
    ct = nib.load(str(path))
    assert np.asarray(ct.dataobj).transpose(2, 1, 0).shape == ws.state(vid).label.shape
    assert np.allclose(ct.affine, ws.item(vid).as_volume("").grid.affine, atol=1e-4)
    # foreground then background clicks through the client: the label file equals our API's answer
    fg = centre(truth)
    ring = (np.abs(np.indices(truth.shape) - np.array(fg[::-1])[:, None, None]).sum(0) < 30) & ~truth
    bg = centre(ring)
    client.infer("medsamkit", vid, {"foreground": [[*fg, k]], "background": [], "label": "GTV"})
    label_file, params = client.infer("medsamkit", vid, {"foreground": [[*fg, k]], "background": [[*bg, k]],
                                                          "label": "GTV"})
    label = read_label_file(label_file)
    assert label.shape == ws.state(vid).label.shape and params["slice"] == k
    assert not label[np.arange(label.shape[0]) != k].any()
    ours = our_answer(running.base, running.token, vid, k, [[*fg, 1], [*bg, 0]], "page")
    assert np.array_equal(label[k] > 0, ours)
    assert dice(label[k] > 0, truth) == pytest.approx(dice(ours, truth)) and dice(ours, truth) > 0.5
    # Slicer's own request sequence: a click (points [i, j, k] and the slice), then a box (roi [i0, i1, j0, j1,
    # k0, k1] in IJK, corners as RAS -> IJK gives them) on a new label
    click = {"label": "GTV", "foreground": [[*fg, k]], "background": [], "slice": k, "client_id": None}
    reply = slicer_infer(running.monailabel, vid, click)
    assert reply.status_code == 200, reply.text
    replayed, _ = multipart_label(reply)
    assert np.array_equal(replayed[k] > 0, our_answer(running.base, running.token, vid, k, [[*fg, 1]], "page2"))
    ys, xs = np.nonzero(truth)
    roi = [int(xs.max()), int(xs.min()), int(ys.min()), int(ys.max()), k, k]
    box = {"label": "GTV", "foreground": [], "background": [], "roi": roi, "slice": 123.0, "reset_state": True,
           "client_id": "slicer-box"}
    reply = slicer_infer(running.monailabel, vid, box)
    assert reply.status_code == 200, reply.text
    replayed, params = multipart_label(reply)
    assert params["box"] == [xs.min(), ys.min(), xs.max(), ys.max()] and params["slice"] == k
    by_box = our_answer(running.base, running.token, vid, k, [], "page3", box=[float(v) for v in params["box"]])
    assert np.array_equal(replayed[k] > 0, by_box) and dice(by_box, truth) > 0.5
    assert slicer_infer(running.monailabel, vid, {"foreground": [[1, 2]]}).status_code == 400
    with pytest.raises(MONAILabelClientException, match="slice"):  # automatic segmentation: slice by slice
        client.infer("medsamkit_everything", vid, {})
    with pytest.raises(MONAILabelClientException, match="learning needs objects"):  # rounds learn from 2D only
        client.train_start("medsamkit", {})


def test_volume_upload_save_label_lands_in_the_store(server3d, tmp_path):
    from volume_crop import write_gtv_crop

    running, ws, out = server3d
    image, label, truth, affine = write_gtv_crop(tmp_path, 2)
    client = MONAILabelClient(running.monailabel, tmpdir=str(tmp_path))
    ident = client.upload_image(str(image), "my_ct")["image"]
    assert ident == "my_ct" and (out / "uploads" / "my_ct.nii.gz").is_file()
    label_file, params = client.infer("medsamkit", ident, {"foreground": [[*centre(truth[2]), 2]]})
    assert dice(read_label_file(label_file)[2] > 0, truth[2]) > 0.5
    saved = client.save_label(ident, str(label), tag="final", params={"label_info": [{"name": "GTV", "idx": 1}]})
    assert saved["objects"] == 1
    meta = json.loads((out / "my_ct.json").read_text())
    assert meta["format"] == "medsamkit-annotate-volume/1" and meta["objects"][0]["tag"] == "final"
    from medsamkit.io.nifti_nrrd import read_nifti

    stored = read_nifti(out / "my_ct.nii.gz")
    assert np.array_equal(stored.array > 0, truth) and np.allclose(stored.affine, affine, atol=1e-4)
    assert client.datastore()["objects"]["my_ct"]["labels"]["final"]["ext"] == ".nii.gz"
    with pytest.raises(MONAILabelClientException):  # another image under a taken name
        client.upload_image(str(label), "my_ct")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a volume" * 100)
    with pytest.raises(MONAILabelClientException, match="400"):
        client.upload_image(str(junk), "junk")
    assert not (out / "uploads" / "junk.nii.gz").exists() and "junk" not in ws.source.items
    # a session (Slicer's "upload as session"): an image infer names by session_id
    sid = client.create_session(str(image))["session_id"]
    assert client.get_session(sid)["image"] == sid
    label_file, _ = client.infer("medsamkit", "", {"foreground": [[*centre(truth[2]), 2]]}, session_id=sid)
    assert dice(read_label_file(label_file)[2] > 0, truth[2]) > 0.5
    assert client.remove_session(sid)["session_id"] == sid
    # a restart finds the uploads and their saved objects again
    again = Workspace(AnnotateConfig("builtin:lung-gtv", out=str(out), monailabel=True), ws.segmenter)
    assert {"my_ct", sid} <= set(again.source.items) and len(again.objects("my_ct").objects) == 1


def test_cli_prints_the_monailabel_url_and_serves_it(folder2d, weights_path, tmp_path):
    import signal

    from medsamkit.annotate.http.launch import free_port
    from test_annotate_cli import _start  # the CLI as a person starts it

    port = free_port()
    proc = _start([str(folder2d[0] / "images"), "--out", str(tmp_path / "out"), "--port", str(port),
                   "--device", "cpu", "--monailabel"])
    try:
        page = proc.stdout.readline().strip()
        line = proc.stdout.readline().strip()
        token = page.split("token=", 1)[1]
        assert line == f"medsamkit annotate: MONAI Label server (3D Slicer / OHIF / QuPath): " \
                       f"http://127.0.0.1:{port}/monailabel/{token}/", line
        info = MONAILabelClient(line.rsplit(" ", 1)[1], tmpdir=str(tmp_path)).info()
        assert info["datastore"]["total"] == 2 and list(info["models"]) == ["medsamkit", "medsamkit_everything"]
        assert httpx.get(f"http://127.0.0.1:{port}/monailabel/info/").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_without_the_flag_there_is_no_monailabel_api(litemedsam, folder2d, tmp_path):
    ws = Workspace(AnnotateConfig(str(folder2d[0] / "images"), out=str(tmp_path / "out")),
                   Segmenter(litemedsam, tmp_path / "emb", weights_identity("litemedsam", None)))
    with BackgroundServer(ws, token="tok") as running:
        assert httpx.get(f"{running.base}/monailabel/tok/info/").status_code == 404
        assert httpx.get(f"{running.base}/monailabel/other/info/").status_code == 401
    ws.segmenter.close()
