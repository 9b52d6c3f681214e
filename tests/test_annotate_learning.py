"""Learning while annotating, on real MoNuSeg crops and the real LiteMedSAM: a learn round (a real job
process with the training engine, a few seconds of budget) becomes a new version only when validation
improves (a good and a deliberately bad training set), the hot swap keeps answering requests, revert
restores the old sha256, objects record their model version, and `finetune --data ANNOTATIONS_DIR` reads
the annotation folder (its run loads back as `annotate --model RUN/best.pt`)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

pytest.importorskip("fastapi")
import httpx  # noqa: E402

from medsamkit.annotate.http.launch import BackgroundServer  # noqa: E402
from medsamkit.annotate.model.learning import LearnController, LearnSettings  # noqa: E402
from medsamkit.annotate.model.segmenter import Segmenter  # noqa: E402
from medsamkit.annotate.session.config import AnnotateConfig  # noqa: E402
from medsamkit.annotate.session.state import ImageAnnotation  # noqa: E402
from medsamkit.annotate.session.workspace import Workspace  # noqa: E402
from medsamkit.core.objects import extract_objects  # noqa: E402
from medsamkit.io.annotations import AnnotationFolder, annotated_objects  # noqa: E402
from medsamkit.io.datasets import open_dataset  # noqa: E402
from medsamkit.io.images import read_image, read_label  # noqa: E402
from medsamkit.models.checkpoints import sha256_of  # noqa: E402
from medsamkit.models.loading import weights_identity  # noqa: E402
from medsamkit.training.data import split_by_image  # noqa: E402

CROP = 256
PER_IMAGE = 8
BUDGET = 25.0


@pytest.fixture(scope="module")
def crops(monuseg_root, tmp_path_factory):
    """A plain folder of two 256 px MoNuSeg train crops (a.png, b.png) and their nuclei (bool masks)."""
    folder = tmp_path_factory.mktemp("crops")
    truths = {}
    names = sorted((monuseg_root / "train" / "images").iterdir())[:2]
    for ident, path in zip("ab", names):
        image = read_image(path)[:CROP, :CROP]
        label = read_label(monuseg_root / "train" / "labels" / path.name)[:CROP, :CROP]
        Image.fromarray(np.ascontiguousarray(image[..., :3])).save(folder / f"{ident}.png")
        objs = [o for o in extract_objects(label, "instance", 30)][:PER_IMAGE]
        truths[ident] = [label == o.label for o in objs]
    return folder, truths


def _val_image() -> str:
    """The image the learn job holds out (the engine's seeded split of the two, in name order)."""
    _, val = split_by_image(2, 0.2, 0)
    return "ab"[val[0]]


def _write(out: Path, source: Path, masks: dict[str, list[np.ndarray]]) -> None:
    """Annotation files as the server writes them (AnnotationFolder), one committed object per mask."""
    files = AnnotationFolder(out)
    for ident, objs in masks.items():
        state = ImageAnnotation.empty(objs[0].shape)
        for m in objs:
            state.commit(m, {"class": None, "prompt": None, "model_version": 0})
        files.write_image(ident, f"{ident}.png", state.label, state.objects(), [], None, str(source))


def _ring(mask: np.ndarray) -> np.ndarray:
    """A deliberately wrong object: the background ring around a nucleus."""
    return ndimage.binary_dilation(mask, iterations=6) & ~mask


def _controller(litemedsam, source: Path, out: Path, **kw) -> tuple[Workspace, LearnController]:
    seg = Segmenter(litemedsam, out / "embeddings", weights_identity("litemedsam", None))
    ws = Workspace(AnnotateConfig(str(source), out=str(out)), seg)
    return ws, ws.start_learning(LearnSettings(budget=BUDGET, min_objects=4, **kw))


@pytest.mark.slow  # a whole round (~40 s); the good round below runs in the default suite
def test_a_bad_training_set_keeps_the_old_model(litemedsam, crops, tmp_path):
    source, truths = crops
    val = _val_image()
    masks = {k: (v if k == val else [_ring(m) for m in v]) for k, v in truths.items()}
    out = tmp_path / "out"
    _write(out, source, masks)
    ws, learning = _controller(litemedsam, source, out, lr=3e-3)
    try:
        sha = ws.segmenter.identity["checkpoint_sha256"]
        learning.start()
        state = learning.wait(240)
        job = state["job"]
        assert state["phase"] == "kept", job
        assert not job["accepted"] and ("lower" in job["reason"] or "not higher" in job["reason"])
        assert set(job["before"]) == {f"val_dice_{m}" for m in ("box", "jitter+5", "center", "random1", "iter3")}
        assert job["trained_on"] == {k: list(range(1, PER_IMAGE + 1)) for k in masks if k != val}
        assert learning.versions.listing()["current"] == 0 and len(learning.versions.listing()["versions"]) == 1
        assert ws.segmenter.identity["checkpoint_sha256"] == sha
        assert not list((out / "learn").glob("v*.pt"))
    finally:
        learning.close()


def _hammer(base: str, token: str, box: list[float], stop: threading.Event, answers: list) -> None:
    """Predict requests with a new box each time, until told to stop: (status, error) of every answer."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        i = 0
        while not stop.is_set():
            b = [box[0], box[1], box[2] + i % 5, box[3] + i % 3]
            r = client.post("/api/predict", json={"image": "a", "box": b})
            answers.append((r.status_code, r.text[:200] if r.status_code != 200 else None))
            i += 1
            stop.wait(0.25)  # a person's pace, not a flood: the job (niced) must get some CPU


def test_a_good_round_updates_the_model_while_serving_and_revert_restores_it(litemedsam, crops, tmp_path):
    source, truths = crops
    out = tmp_path / "out"
    _write(out, source, truths)
    # served with native clicks (the decoder reading points: ~0 Dice on this box-only model), so that a few
    # training steps can win the round: this test is about the update path. Served with the default click
    # search, "before" is the search's clicks (test_the_round_compares_against_the_served_clicks).
    seg = Segmenter(litemedsam, out / "embeddings", weights_identity("litemedsam", None), clicks="native")
    ws = Workspace(AnnotateConfig(str(source), out=str(out), learn_budget=BUDGET, learn_min_objects=4,
                                  clicks="native"), seg)
    base_sha = seg.identity["checkpoint_sha256"]
    ys, xs = np.nonzero(truths["a"][0])
    box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
    with BackgroundServer(ws) as server:
        auth = {"Authorization": f"Bearer {server.token}"}
        client = httpx.Client(base_url=server.base, headers=auth, timeout=120)
        assert client.get("/api/learn").json()["phase"] == "ready"
        assert client.post("/api/learn/revert", json={"version": 7}).status_code == 404
        stop, answers = threading.Event(), []
        hammer = threading.Thread(target=_hammer, args=(server.base, server.token, box, stop, answers))
        hammer.start()
        try:
            server.app.state.learning.settings.lr = 3e-4  # a few steps in a loaded test: larger ones
            # 8 validation objects: box Dice moves by ~0.002 either way after a few steps; this test is about the
            # update path (the strict default rule is exercised by the benchmark and the bad-set test)
            server.app.state.learning.settings.box_tolerance = 0.01
            # validate from step 4 on: how many steps fit in the budget depends on the machine (8 on a loaded
            # one, 11-12 on a quiet one, where box Dice was already 0.016 lower), the early weights do not
            server.app.state.learning.settings.first_validation = 4
            assert client.post("/api/learn/start").json()["phase"] == "training"
            assert client.post("/api/learn/start").status_code == 400  # one round at a time
            state = server.app.state.learning.wait(240)
        finally:
            stop.set()
            hammer.join()
        job = state["job"]
        assert json.loads((Path(job["folder"]) / "job.json").read_text())["served_clicks"] == "native"
        assert state["phase"] == "updated", job
        assert answers and all(code == 200 for code, _ in answers), [a for a in answers if a[0] != 200][:3]
        clicks = ("center", "random1", "iter3")
        assert np.mean([job["after"][f"val_dice_{m}"] for m in clicks]) > \
            np.mean([job["before"][f"val_dice_{m}"] for m in clicks])
        listing = client.get("/api/learn/versions").json()
        v1 = listing["versions"][1]
        assert listing["current"] == 1 and v1["checkpoint_sha256"] == sha256_of(out / "learn" / "v001.pt")
        assert v1["trained_on"] and v1["before"] == job["before"]
        info = client.get("/api/info").json()
        assert info["model"]["model_version"] == 1 and info["point_prompts"]

        # after the swap: clicks alone are answered, and a commit records the version that made it
        r = client.post("/api/predict", json={"image": "b", "points": [[box[0] + 3, box[1] + 3, 1]]})
        assert r.status_code == 200
        committed = client.post("/api/commit", json={"image": "b"}).json()["committed"]
        assert committed["model_version"] == 1 and committed["checkpoint_sha256"] == v1["checkpoint_sha256"]

        reverted = client.post("/api/learn/revert", json={"version": 0}).json()
        assert reverted["current"] == 0 and reverted["model"]["checkpoint_sha256"] == base_sha
        client.post("/api/predict", json={"image": "a", "box": box})
        again = client.post("/api/commit", json={"image": "a"}).json()["committed"]
        assert again["model_version"] == 0 and again["checkpoint_sha256"] == base_sha
    saved = json.loads((out / "b.json").read_text())
    by_id = {o["id"]: o for o in saved["objects"]}
    assert by_id[committed["id"]]["model_version"] == 1 and saved["source"] == str(source.resolve())
    assert json.loads((out / "learn" / "versions.json").read_text())["current"] == 0
    # a relaunch resumes with the version that is current
    ws2 = Workspace(AnnotateConfig(str(source), out=str(out)),
                    Segmenter(litemedsam, out / "embeddings", weights_identity("litemedsam", None)))
    relaunched = ws2.start_learning(LearnSettings())
    relaunched.close()
    assert ws2.segmenter.identity["model_version"] == 0


def test_killing_the_job_loses_no_annotation(litemedsam, crops, tmp_path):
    source, truths = crops
    out = tmp_path / "out"
    _write(out, source, truths)
    before = {p.name: p.read_bytes() for p in out.glob("*.*")}
    ws, learning = _controller(litemedsam, source, out)
    try:
        learning.start()
        learning._proc.kill()  # a crash of the job process, as abrupt as it gets
        state = learning.wait(60)
        # the round was to compare against the served model's clicks (the click search on the bundled
        # box-only model) and validate on at least 8 objects
        job_file = json.loads((Path(state["job"]["folder"]) / "job.json").read_text())
        assert job_file["served_clicks"] == "search" and job_file["config"]["min_val_objects"] == 8
        assert state["phase"] == "failed" and "status" in state["job"]["error"]
        assert {p.name: p.read_bytes() for p in out.glob("*.*")} == before
        assert learning.versions.current == 0
        ws.predict("a", 0, None, [10, 10, 60, 60], [], False)
        assert ws.commit("a", 0, None, None, None).record["model_version"] == 0
    finally:
        learning.close()


def test_the_annotation_folder_is_training_data(crops, tmp_path):
    source, truths = crops
    out = tmp_path / "out"
    _write(out, source, truths)
    record = json.loads((out / "a.json").read_text())
    record["objects"][0]["hidden"] = True
    (out / "a.json").write_text(json.dumps(record))
    assert annotated_objects(out) == {"a": list(range(2, PER_IMAGE + 1)), "b": list(range(1, PER_IMAGE + 1))}
    cases = {c.name: c for c in open_dataset(out).cases()}
    assert cases["a"].image.shape[:2] == (CROP, CROP)
    assert sorted(np.unique(cases["a"].label))[1:] == list(range(2, PER_IMAGE + 1))  # hidden one left out
    assert np.array_equal(cases["b"].label == 3, truths["b"][2])


@pytest.mark.slow  # two engine runs (~20 s idle, 40 s loaded)
def test_finetune_reads_an_annotation_folder_and_annotate_loads_the_run(litemedsam, crops, tmp_path):
    from click.testing import CliRunner

    from medsamkit.cli import main

    source, truths = crops
    out = tmp_path / "out"
    _write(out, source, truths)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["finetune", "--data", str(out), "--out", str(run), "--epochs", "1",
                                       "--val-objects", "4", "--prompts", "box,center"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_objects"] + summary["val_objects"] == PER_IMAGE + 4
    ws = Workspace(AnnotateConfig(str(source), out=str(tmp_path / "again"), model=str(run / "best.pt")))
    info = ws.info()
    assert info.point_prompts and info.model["checkpoint_sha256"] == sha256_of(run / "best.pt")

    # what the learn job asks of the engine: start from a run's weights, stop on time (validated), no saves
    import torch

    from medsamkit.training import FinetuneConfig, finetune

    again = finetune(FinetuneConfig(data=[str(out)], out=str(tmp_path / "next"), init_from=str(run / "best.pt"),
                                    max_seconds=0.0, validate_every=50, epochs=99, val_objects=4,
                                    prompts="box,center", cache=str(run / "embeddings"), show_progress=False))
    assert again["stopped"] == "max_seconds" and again["steps"] == 0 and again["epochs_done"] == 1
    assert again["last"]["val_dice_center"] == pytest.approx(summary["last"]["val_dice_center"])
    a = torch.load(run / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "next" / "best.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)



@pytest.mark.slow  # a round that runs until it stops itself (~1-2 min)
def test_a_round_validates_after_doubling_steps_and_stops_when_nothing_improves(litemedsam, crops, tmp_path):
    """Validations at 2, 4, 8, ... steps (not by wall time: a fast machine over-fits a few objects between two
    timed validations), the best acceptable weights kept, and the round ends PATIENCE validations after them."""
    from medsamkit.annotate.model.learn_job import PATIENCE, click_mean
    from medsamkit.prompts import parse_modes

    source, truths = crops
    out = tmp_path / "out"
    _write(out, source, truths)
    ws, learning = _controller(litemedsam, source, out, lr=3e-4, box_tolerance=0.01, first_validation=2)
    learning.settings.budget = budget = 400.0
    try:
        learning.start()
        job = learning.wait(900)["job"]
    finally:
        learning.close()
    steps = [v["steps"] for v in job["validations"]]
    assert steps[0] >= 2 and all(b >= 2 * a for a, b in zip(steps, steps[1:])), steps
    assert job["accepted"], job["reason"]
    chosen = next(i for i, v in enumerate(job["validations"]) if v["steps"] == job["steps"])
    later = job["validations"][chosen + 1:]
    assert len(later) == PATIENCE and job["seconds"] < budget, (steps, job["seconds"])
    modes = parse_modes(learning.settings.prompts)
    assert all(not v["acceptable"] or click_mean(v, modes) <= click_mean(job["after"], modes) for v in later)
