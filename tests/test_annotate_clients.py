"""Several clients on one image through a real uvicorn, with the real bundled model on builtin:dsb-nuclei: each
predicts its own nucleus, then all commit at once; every commit saves that client's own answer, painted in
commit order, and nothing of another client's. A client's Esc clears only its own prompts."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402

from medsamkit.annotate.http.launch import BackgroundServer  # noqa: E402
from medsamkit.annotate.model.segmenter import Segmenter  # noqa: E402
from medsamkit.annotate.session.config import AnnotateConfig  # noqa: E402
from medsamkit.annotate.session.workspace import Workspace  # noqa: E402
from medsamkit.core.objects import extract_objects  # noqa: E402
from medsamkit.io.datasets import open_dataset  # noqa: E402
from medsamkit.models.loading import weights_identity  # noqa: E402

DSB = "dsb-nuclei_img2d"
CLIENTS = 8


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))) > 127


def _separate_boxes(n: int) -> list[list[float]]:
    """Boxes of ``n`` nuclei at least 12 px apart from each other."""
    label = next(open_dataset("builtin:dsb-nuclei").cases()).label
    boxes: list[np.ndarray] = []
    for obj in extract_objects(label):
        b = obj.box().astype(float)
        if obj.area >= 100 and all(b[0] > o[2] + 12 or o[0] > b[2] + 12 or b[1] > o[3] + 12 or o[1] > b[3] + 12
                                   for o in boxes):
            boxes.append(b)
    assert len(boxes) >= n
    return [b.tolist() for b in boxes[:n]]


@pytest.fixture
def server(litemedsam, tmp_path):
    ws = Workspace(AnnotateConfig("builtin:dsb-nuclei", out=str(tmp_path / "out")),
                   Segmenter(litemedsam, tmp_path / "embeddings", weights_identity("litemedsam", None)))
    with BackgroundServer(ws, token=None) as running:
        yield running, tmp_path / "out"
    ws.segmenter.close()


def test_clients_that_predict_then_commit_together_each_save_their_own_answer(server):
    running, out = server
    boxes = _separate_boxes(CLIENTS)
    ready = threading.Barrier(CLIENTS)
    results: dict[int, tuple] = {}

    def person(i: int) -> None:
        with httpx.Client(base_url=running.base, timeout=300) as http:
            view = {"image": DSB, "client": f"person-{i}"}
            answer = http.post("/api/predict", json={**view, "box": boxes[i]}).json()
            ready.wait(timeout=300)  # every client holds an answer before anyone commits
            done = http.post("/api/commit", json=view)
            results[i] = (decode(answer["masks"][0]), done.status_code, done.json())

    threads = [threading.Thread(target=person, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(CLIENTS))
    assert all(code == 200 for _, code, _ in results.values()), [r[2] for r in results.values() if r[1] != 200]
    label = np.asarray(Image.open(out / f"{DSB}.png"))
    by_id = {reply["committed"]["id"]: i for i, (_, _, reply) in results.items()}
    for i, (mask, _, reply) in results.items():
        committed = reply["committed"]
        assert committed["prompt"]["box"] == boxes[i]  # this client's prompt, not another's
        later = np.zeros_like(mask)
        for oid, j in by_id.items():
            if oid > committed["id"]:
                later |= results[j][0]
        assert np.array_equal(label == committed["id"], mask & ~later)  # its own mask, painted in order


def test_a_clients_esc_and_commit_leave_the_others_prompts(server):
    running, _ = server
    a, b = _separate_boxes(2)
    with httpx.Client(base_url=running.base, timeout=300) as http:
        http.post("/api/predict", json={"image": DSB, "client": "a", "box": a})
        http.post("/api/predict", json={"image": DSB, "client": "b", "box": b})
        http.post("/api/clear", json={"image": DSB, "client": "a"})
        refused = http.post("/api/commit", json={"image": DSB, "client": "a"})
        assert refused.status_code == 400 and "prompt the model first" in refused.json()["error"]
        assert http.post("/api/commit", json={"image": DSB, "client": "b"}).json()["committed"]["prompt"]["box"] == b
        assert http.post("/api/commit", json={"image": DSB}).status_code == 400  # no client: its own (none)
        bad = http.post("/api/predict", json={"image": DSB, "client": "a b/../c", "box": a})
        assert bad.status_code == 400 and "client" in bad.json()["error"]
