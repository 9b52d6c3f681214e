"""The annotator's one compute thread (``annotate.model.compute``): calls run one at a time by priority, errors
reach the caller, a call from the thread itself runs in place, shutdown cancels what is queued (and can wait for
the running call), the thread stops once its owner is gone, a cancelled embedding is computed again; and every
model computation of a real session (2D box and click answers, a propagation run, a 3D box and a 3D click on real
CT) runs on it."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest

from medsamkit.annotate.model.compute import BACKGROUND, URGENT, WANTED, ComputeThread, run_passing
from medsamkit.core.errors import InputError


def _hold(ct: ComputeThread) -> threading.Event:
    """Keep the thread busy until the returned event is set (what is queued meanwhile waits)."""
    started, release = threading.Event(), threading.Event()
    ct.submit(lambda: (started.set(), release.wait(10)))
    assert started.wait(10)
    return release


def test_calls_run_by_priority_then_in_order():
    ct = ComputeThread("test")
    release = _hold(ct)
    order: list[str] = []
    futures = [ct.submit(order.append, name, priority=p) for name, p in
               [("prefetch", BACKGROUND), ("embed a", WANTED), ("prompt", URGENT), ("embed b", WANTED)]]
    release.set()
    for f in futures:
        f.result(10)
    assert order == ["prompt", "embed a", "embed b", "prefetch"]
    ct.shutdown()


def test_errors_reach_the_caller_and_nested_calls_run_in_place():
    ct = ComputeThread("test")

    def refuse():
        raise InputError("box outside the image")

    with pytest.raises(InputError, match="box outside the image"):
        ct.call(refuse)
    # a call made from the compute thread itself must not wait for the thread (it would wait forever)
    nested = ct.submit(lambda: ct.call(lambda: threading.current_thread().name))
    assert nested.result(10) == "test"
    assert not ct.on_thread() and ct.call(ct.on_thread)
    ct.shutdown()


def test_shutdown_cancels_what_is_queued_and_refuses_more():
    ct = ComputeThread("test")
    thread = ct._thread
    release = _hold(ct)
    queued = ct.submit(lambda: 1)
    ct.shutdown()
    release.set()
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        ct.submit(lambda: 2)
    thread.join(10)
    assert not thread.is_alive()


def test_the_thread_stops_when_collected_and_shutdown_can_wait():
    ct = ComputeThread("test")
    thread = ct._thread
    assert ct.call(lambda: 7) == 7
    del ct
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()
    ct = ComputeThread("test")
    started = threading.Event()
    slow = ct.submit(lambda: (started.set(), time.sleep(0.3)))
    assert started.wait(10)
    ct.shutdown(wait=True)  # the running call finishes first
    assert slow.done() and not slow.cancelled() and not ct._thread.is_alive()


def test_run_passing_returns_raises_and_leaves_no_thread():
    before = threading.active_count()
    assert run_passing(lambda a, b: (a + b, threading.current_thread().name), 2, 3) == (5, "passing")
    with pytest.raises(InputError, match="unreadable checkpoint"):
        run_passing(lambda: (_ for _ in ()).throw(InputError("unreadable checkpoint")))
    assert threading.active_count() == before


def test_a_cancelled_embedding_is_computed_again(litemedsam, tmp_path):
    """An embedding future cancelled while queued (a request gone, a shutdown) must not be handed out again: the
    next request for the view computes it."""
    from medsamkit.annotate.model.segmenter import Segmenter
    from medsamkit.models.loading import weights_identity

    segmenter = Segmenter(litemedsam, tmp_path / "emb", weights_identity("litemedsam", None))
    pixels = (np.random.default_rng(0).random((96, 128)) * 255).astype(np.uint8)
    release = _hold(segmenter._worker)
    first = segmenter.embedding(("a", None), pixels)
    assert first.cancel()
    release.set()
    again = segmenter.embedding(("a", None), pixels)
    assert again is not first and again.result(60).features.shape[-1] == 64
    segmenter.close()


def test_a_sessions_model_work_runs_on_the_compute_thread(litemedsam, tmp_path):
    """Forward hooks on the encoder and the decoder's first layer record the thread of every model call a real
    session makes through its HTTP API: box and click answers, propagation, a 3D box and a 3D click."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medsamkit.annotate.http.app import create_app
    from medsamkit.annotate.model.segmenter import Segmenter
    from medsamkit.annotate.session.config import AnnotateConfig
    from medsamkit.annotate.session.workspace import Workspace
    from medsamkit.models.loading import weights_identity
    from volume_crop import write_gtv_crop

    image, label, truth, _ = write_gtv_crop(tmp_path, half=1)
    seen: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda *_: seen.append(threading.current_thread().name))
             for m in (litemedsam.image_encoder, litemedsam.mask_decoder.transformer.layers[0].norm1)]
    try:
        segmenter = Segmenter(litemedsam, tmp_path / "emb", weights_identity("litemedsam", None))
        ws = Workspace(AnnotateConfig(str(image), out=str(tmp_path / "out"), window="-1000,400"), segmenter)
        client = TestClient(create_app(ws, None), base_url="http://127.0.0.1")
        vid = client.get("/api/info").json()["images"][0]["id"]
        ys, xs = np.nonzero(truth[1])
        box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
        view = {"image": vid, "axis": 0, "slice": 1}
        click = [float(np.median(xs)), float(np.median(ys)), 1]
        for body in ({**view, "box": box}, {**view, "points": [click]}):
            assert client.post("/api/predict", json=body).status_code == 200
        oid = client.post("/api/commit", json=view).json()["committed"]["id"]
        assert client.post("/api/propagate", json={**view, "object": oid}).status_code == 200
        reply = client.post("/api/box3d", json={"image": vid, "box3d": [0, 2, 1, *box]})
        assert reply.status_code == 200, reply.text
        new = reply.json()["object"]
        reply = client.post("/api/click3d", json={**view, "object": new, "x": click[0], "y": click[1]})
        assert reply.status_code == 200, reply.text
        segmenter.close()
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) > 10 and set(seen) == {"model"}, sorted(set(seen))
