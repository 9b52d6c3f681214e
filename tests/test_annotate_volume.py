"""Volumes in the annotation server, on real CT (builtin:lung-gtv: DICOM + RTSTRUCT) and a NIfTI written from
it, with the real LiteMedSAM: box on the GTV's largest slice, propagation with the project's engine and its
stop reasons, a corrected slice kept through re-propagation, the NIfTI label on the input grid and the DICOM
SEG read back by the project's own reader, and the one-line 4xx answers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medsamkit.annotate.http.app import create_app  # noqa: E402
from medsamkit.annotate.model.segmenter import Segmenter  # noqa: E402
from medsamkit.annotate.session.config import AnnotateConfig  # noqa: E402
from medsamkit.annotate.session.workspace import Workspace  # noqa: E402
from medsamkit.metrics import dice  # noqa: E402
from medsamkit.models.loading import weights_identity  # noqa: E402
from volume_crop import lung_case, write_gtv_crop  # noqa: E402

HALF = 3  # the NIfTI crop: the GTV's largest slice +/- 3 slices


def tight(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("volume-embeddings")


@pytest.fixture
def make_client(litemedsam, cache_dir, tmp_path):
    def make(source: str, out=None, **kw) -> TestClient:
        segmenter = Segmenter(litemedsam, cache_dir, weights_identity("litemedsam", None))
        ws = Workspace(AnnotateConfig(source, out=str(out or tmp_path / "out"), **kw), segmenter)
        return TestClient(create_app(ws, None), base_url="http://127.0.0.1")

    return make


@pytest.fixture(scope="module")
def nifti_pair(tmp_path_factory):
    """pat_4's CT around the GTV's largest slice as NIfTI image + label, on its own (shifted) grid."""
    return write_gtv_crop(tmp_path_factory.mktemp("nifti"), HALF)


def test_nifti_volume_propagate_correct_reopen(make_client, nifti_pair, tmp_path):
    import nibabel as nib

    image, label, truth, affine = nifti_pair
    client = make_client(f"{image}::{label}", window="-1000,400")
    vid = client.get("/api/info").json()["images"][0]["id"]
    geo = client.get(f"/api/volume/{vid}").json()
    assert "shape" in geo, geo
    assert geo["shape"] == list(truth.shape) and np.allclose(geo["affine"], affine, atol=1e-5)
    assert geo["windows"]["kind"] == "ct" and geo["windows"]["presets"]["lung"] == [-600.0, 1500.0]
    assert [a["aspect"] for a in geo["axes"]] == pytest.approx([1.0, 3.0 / 0.9765625, 3.0 / 0.9765625])
    assert client.get("/api/info").json()["images"][0]["geometry"]["spacing"] == geo["spacing"]
    # the label file's GTV comes in as object 1; the person's box makes object 2 on the middle slice
    view = {"image": vid, "axis": 0, "slice": HALF}
    assert client.post("/api/open", json=view).json()["ready"]
    client.post("/api/predict", json={**view, "box": tight(truth[HALF])})
    committed = client.post("/api/commit", json=view).json()["committed"]
    oid = committed["id"]
    assert oid == 2 and committed["slices"]["0:3"]["source"] == "person"
    run = client.post("/api/propagate", json={**view, "object": oid}).json()
    assert sorted(v["slice"] for v in run["visited"]) == [0, 1, 2, 4, 5, 6]
    assert [(s["direction"], s["reason"]) for s in run["stops"]] == [("up", "volume edge"), ("down", "volume edge")]
    ws = client.app.state.workspace
    lab = ws.state(vid).label
    assert dice(lab == oid, truth) >= 0.45
    assert all((lab[z] == oid).any() for z in range(lab.shape[0]))
    # the person corrects slice 5 with a smaller box; re-propagating from 3 stops before it and keeps it
    inner = tight(truth[5])
    inner = [inner[0] + 4, inner[1] + 4, inner[2] - 4, inner[3] - 4]
    client.post("/api/predict", json={"image": vid, "axis": 0, "slice": 5, "box": inner})
    client.post("/api/correct", json={"image": vid, "axis": 0, "slice": 5, "object": oid})
    corrected, slice6 = (lab[5] == oid).copy(), (lab[6] == oid).copy()
    rerun = client.post("/api/propagate", json={**view, "object": oid, "direction": "up"}).json()
    assert rerun["stops"][0] == {"slice": 5, "reason": "corrected slice", "direction": "up"}
    assert rerun["encoded"] == 0  # slice 4 was embedded by the first run
    assert np.array_equal(lab[5] == oid, corrected) and np.array_equal(lab[6] == oid, slice6)
    # propagating from the corrected slice changes what lies beyond it, never the slice itself
    beyond = client.post("/api/propagate", json={"image": vid, "axis": 0, "slice": 5, "object": oid,
                                                 "direction": "up"}).json()
    assert beyond["visited"][0]["slice"] == 6 and np.array_equal(lab[5] == oid, corrected)
    record = next(o for o in beyond["objects"] if o["id"] == oid)
    assert record["slices"]["0:5"]["source"] == "person" and len(record["propagations"]) == 3
    assert record["propagations"][0]["stops"][0]["reason"] == "volume edge"
    assert record["checkpoint_sha256"] and record["propagations"][0]["checkpoint_sha256"]
    # NIfTI on the input grid: nibabel sees the same shape, affine and the object ids
    saved = nib.load(str(tmp_path / "out" / f"{vid}.nii.gz"))
    assert saved.shape == nib.load(str(image)).shape
    assert np.abs(saved.affine - nib.load(str(image)).affine).max() < 1e-5
    assert np.array_equal(np.asarray(saved.dataobj).transpose(2, 1, 0), lab)
    assert set(np.unique(lab).tolist()) == {0, 1, 2}
    # undo the last run: slice 6 as before; a fresh session reopens exactly what was saved
    client.post("/api/undo", json={"image": vid})
    assert np.array_equal(ws.state(vid).label[6] == oid, slice6)
    fresh = make_client(f"{image}::{label}", window="-1000,400").app.state.workspace
    assert np.array_equal(fresh.state(vid).label, ws.state(vid).label)
    assert fresh.state(vid).records[oid]["slices"]["0:5"]["source"] == "person"


def test_volume_errors_are_one_line_4xx(make_client, nifti_pair):
    image, label, truth, _ = nifti_pair
    client = make_client(f"{image}::{label}", window="-1000,400")
    vid = client.get("/api/info").json()["images"][0]["id"]
    n = truth.shape[0]
    cases = [
        ("post", "/api/predict", {"image": vid, "axis": 0, "slice": n, "box": [1, 1, 9, 9]}, 400, "outside 0..6"),
        ("post", "/api/predict", {"image": vid, "axis": 3, "slice": 0, "box": [1, 1, 9, 9]}, 400, "axis must be"),
        ("post", "/api/predict", {"image": vid, "axis": 0, "box": [1, 1, 9, 9]}, 400, "give a slice"),
        ("post", "/api/open", {"image": vid, "axis": 1, "slice": -1}, 400, "outside"),
        ("post", "/api/propagate", {"image": vid, "object": 99, "slice": 0}, 404, "not found"),
        ("post", "/api/propagate", {"image": vid, "object": 1, "slice": 0, "direction": "sideways"}, 400,
         "direction"),
        ("post", "/api/propagate", {"image": vid, "object": 1, "slice": 0, "min_iou": 2}, 400, "min_iou"),
        ("post", "/api/propagate", {"image": "nope", "object": 1, "slice": 0}, 404, "not found"),
        ("post", "/api/correct", {"image": vid, "object": 1, "slice": 2}, 400, "prompt the model"),
        ("get", f"/api/volume/{vid}/view?axis=2&slice={truth.shape[2]}", None, 400, "outside"),
        ("get", f"/api/volume/{vid}/view?slice=0&window=sunset", None, 400, "unknown window"),
        ("get", f"/api/volume/{vid}/view?slice=0&level=40", None, 400, "level and width"),
        ("get", f"/api/labels/{vid}", None, 400, "/api/volume/ID/labels"),
        ("post", "/api/box3d", {"image": vid, "box3d": [0, n, 3, 1, 1, 9, 9]}, 400, "z_max < 7"),
        ("post", "/api/box3d", {"image": vid, "box3d": [0.5, 4, 3, 1, 1, 9, 9]}, 400, "whole slice numbers"),
        ("post", "/api/box3d", {"image": vid, "box3d": [0, 4, 3, 1, 1, 9]}, 400, "box3d"),
        ("post", "/api/box3d", {"image": vid, "box3d": [0, 4, 3, 9, 1, 1, 9]}, 400, "0 <= x0 <= x1"),
        ("post", "/api/click3d", {"image": vid, "object": 1, "slice": 2, "x": 10_000, "y": 5}, 400,
         "outside view 2"),
        ("post", "/api/click3d", {"image": vid, "object": 99, "slice": 2, "x": 5, "y": 5}, 404, "not found"),
    ]
    for method, path, body, status, text in cases:
        r = client.post(path, json=body) if method == "post" else client.get(path)
        assert r.status_code == status, (path, body, r.text)
        assert text in r.json()["error"] and "\n" not in r.json()["error"], r.text
    lung = client.get(f"/api/volume/{vid}/view?axis=1&slice=80&window=lung")
    soft = client.get(f"/api/volume/{vid}/view?axis=1&slice=80&level=40&width=400")
    assert lung.status_code == soft.status_code == 200 and lung.content != soft.content


def test_dicom_seg_round_trip_on_lung_gtv(make_client, tmp_path):
    from medsamkit.io.dicom.seg import read_dicom_seg
    from medsamkit.io.nifti_nrrd import read_nifti

    case = lung_case("pat_2")
    truth = case.label == 1
    z = int(truth.sum((1, 2)).argmax())
    client = make_client("builtin:lung-gtv", class_names=["tumour", "node"])
    vid = "lung-gtv_pat_2"
    assert [o["class"] for o in client.get(f"/api/objects/{vid}").json()["objects"]] == ["tumour"]  # RTSTRUCT
    view = {"image": vid, "axis": 0, "slice": z}
    client.post("/api/predict", json={**view, "box": [10, 10, 40, 40]})
    node = client.post("/api/commit", json={**view, "class": "node"}).json()["committed"]
    assert node["class"] == "node" and node["id"] == 2
    out = tmp_path / "out"
    segs = read_dicom_seg(out / f"{vid}.seg.dcm", case.meta["volume"])
    classes = read_nifti(out / f"{vid}.classes.nii.gz").array
    ids = read_nifti(out / f"{vid}.nii.gz").array
    assert sorted(segs) == ["node", "tumour"]
    for value, name in ((1, "tumour"), (2, "node")):
        assert segs[name].any() and dice(segs[name], classes == value) == 1.0
    assert dice(segs["node"], ids == 2) == 1.0
    assert np.array_equal(segs["tumour"], truth & (ids != 2))
    import pydicom

    ds = pydicom.dcmread(out / f"{vid}.seg.dcm", stop_before_pixels=True)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == case.meta["volume"].meta["SeriesInstanceUID"]
    # without classes each object is a segment; the RTSTRUCT's object keeps its ROI name
    plain = make_client("builtin:lung-gtv", out=tmp_path / "plain")
    plain.post("/api/predict", json={**view, "box": [10, 10, 40, 40]})
    plain.post("/api/commit", json=view)
    segs = read_dicom_seg(tmp_path / "plain" / f"{vid}.seg.dcm", case.meta["volume"])
    assert sorted(segs) == ["GTV-1", "object 2"]
    assert dice(segs["object 2"], read_nifti(tmp_path / "plain" / f"{vid}.nii.gz").array == 2) == 1.0


@pytest.mark.slow
def test_lung_gtv_box_propagation_matches_the_engine(make_client, litemedsam, cache_dir):
    from medsamkit.predictor import Predictor
    from medsamkit.volumes.segment import segment_volume
    from medsamkit.volumes.slices import SliceEmbedder

    case = lung_case("pat_4")
    truth = case.label == 1
    z = int(truth.sum((1, 2)).argmax())
    box = tight(truth[z])
    client = make_client("builtin:lung-gtv")
    vid = "lung-gtv_pat_4"
    view = {"image": vid, "axis": 0, "slice": z}
    client.post("/api/predict", json={**view, "box": box})
    oid = client.post("/api/commit", json=view).json()["committed"]["id"]
    run = client.post("/api/propagate", json={**view, "object": oid}).json()
    assert {s["reason"] for s in run["stops"]} <= {"area below minimum", "IoU below threshold", "volume edge"}
    mine = client.app.state.workspace.state(vid).label == oid
    assert dice(mine, truth) >= 0.45
    embedder = SliceEmbedder(Predictor(litemedsam), case.image, cache=cache_dir)
    engine = segment_volume(embedder, case.image, box_slice=(z, *box)).astype(bool)
    assert embedder.encoded == set()  # every slice came from the session's cache
    assert np.array_equal(mine, engine)


def test_volume_specs_open_with_their_grid_and_labels(nifti_pair, tmp_path):
    """Single NIfTI / NRRD files, a folder of them, an nnU-Net folder and a DICOM series folder (RTSTRUCT)."""
    import shutil

    from medsamkit.annotate.session.items import ItemSource
    from medsamkit.annotate.session.volumes import VolumeItem
    from medsamkit.io.builtin import builtin_path
    from medsamkit.io.nifti_nrrd import read_nifti, write_nrrd
    from medsamkit.io.spec import resolve_spec

    image, label, truth, affine = nifti_pair
    grid = read_nifti(image)
    write_nrrd(grid.array, tmp_path / "ct.nrrd", like=grid)
    nnunet = tmp_path / "nnunet"
    (nnunet / "imagesTr").mkdir(parents=True)
    (nnunet / "labelsTr").mkdir()
    shutil.copy(image, nnunet / "imagesTr" / "case_0000.nii.gz")
    shutil.copy(label, nnunet / "labelsTr" / "case.nii.gz")
    folder = tmp_path / "files"
    folder.mkdir()
    shutil.copy(image, folder / "a.nii.gz")
    shutil.copy(tmp_path / "ct.nrrd", folder / "b.nrrd")
    dicom = builtin_path("lung-gtv") / "pat_2"
    expect = {str(image): None, str(tmp_path / "ct.nrrd"): None, str(nnunet): truth, str(folder): None,
              f"{image}::{label}": truth}
    for spec, labels in expect.items():
        assert resolve_spec(spec).volumes, spec
        source = ItemSource(spec)
        entry = source.item(source.ids[0])
        assert isinstance(entry, VolumeItem) and entry.shape == truth.shape, spec
        assert np.allclose(entry.geometry["affine"], affine, atol=1e-4), spec
        got = entry.loaded().label
        assert (got is None) if labels is None else np.array_equal(got > 0, labels), spec
    assert ItemSource(str(folder)).ids == ["a", "b"]
    source = ItemSource(str(dicom))
    entry = source.item("pat_2")
    assert entry.geometry["dicom"] and entry.loaded().label.any() and entry.geometry["windows"]["kind"] == "ct"
    assert not resolve_spec("builtin:dsb-nuclei").volumes


def test_three_slice_input_is_the_engines(make_client, nifti_pair, predictor):
    from medsamkit.volumes.slices import slice_input

    image, label, truth, _ = nifti_pair
    client = make_client(str(image), window="-1000,400", three_slice=True)
    ws = client.app.state.workspace
    entry = ws.source.item("ct")
    assert client.get("/api/volume/ct").json()["three_slice"] is True
    box = tight(truth[2])
    res = client.post("/api/predict", json={"image": "ct", "axis": 0, "slice": 2, "box": box}).json()
    three = slice_input(entry.loaded().image01, 2, three_slice=True)
    assert three.shape[-1] == 3 and not np.array_equal(three[..., 0], three[..., 1])
    from medsamkit.prompts import Prompt, stack_prompts
    from test_annotate_api import decode

    predictor.set_image(three)
    expected = predictor.predict(**stack_prompts([Prompt(box=np.asarray(box, np.float32))])).masks[0, 0]
    assert np.array_equal(decode(res["masks"][0]), expected)


def test_views_place_masks_where_they_show_them(nifti_pair):
    """A mask committed on any axis lands on the voxels that view shows; corrections and runs undo exactly."""
    from medsamkit.annotate.session.geometry import view_stack
    from medsamkit.annotate.session.state import VolumeAnnotation

    _, _, truth, _ = nifti_pair
    state = VolumeAnnotation.from_label_map(truth.astype(np.uint8))
    rng = np.random.default_rng(0)
    for axis, k in ((0, 2), (1, 60), (2, 90)):
        mask = rng.random(view_stack(truth, axis)[k].shape) > 0.7
        before = state.label.copy()
        rec = state.commit(mask, {"axis": axis, "slice": k, "prompt": None})
        assert np.array_equal(state.view_mask(rec["id"], axis, k), mask)
        assert rec["slices"][f"{axis}:{k}"]["source"] == "person"
        assert ((state.label != before) <= (state.label == rec["id"])).all()  # nothing else changed
    assert view_stack(truth, 1)[0].shape == (truth.shape[0], truth.shape[2])
    assert np.array_equal(view_stack(truth, 1)[5][0], truth[-1, 5])  # coronal row 0 = the top slice
    snapshot = state.label.copy()
    smaller = state.view_mask(1, 0, 3) & (np.arange(truth.shape[2]) < 90)
    state.correct_view(1, 0, 3, smaller, {"prompt": None})
    assert np.array_equal(state.view_mask(1, 0, 3), smaller)
    state.paint_views(1, 0, {4: np.zeros(truth.shape[1:], bool)}, {4: {"source": "cleared", "area": 0}}, {})
    assert not state.view_mask(1, 0, 4).any() and state.records[1]["slices"]["0:4"]["source"] == "cleared"
    state.undo()
    state.undo()
    assert np.array_equal(state.label, snapshot)


@pytest.mark.parametrize("corrected_axis", [0, 1, 2])
def test_a_correction_on_one_axis_is_kept_through_runs_on_the_others(nifti_pair, corrected_axis):
    """A view a person corrected stays as made when propagation or the 3D engine repaints the object's views
    on another axis (each run still sets every other voxel of its views); undo restores the run's voxels."""
    from medsamkit.annotate.session.geometry import view_stack
    from medsamkit.annotate.session.state import VolumeAnnotation

    _, _, truth, _ = nifti_pair
    state = VolumeAnnotation.from_label_map(truth.astype(np.uint8))
    k = int(view_stack(truth, corrected_axis).sum((1, 2)).argmax())
    person = view_stack(truth, corrected_axis)[k].copy()
    person[: person.shape[0] // 2] = False  # the person keeps half of what the label had there
    state.correct_view(1, corrected_axis, k, person, {"prompt": None})
    for axis in {0, 1, 2} - {corrected_axis}:
        stack = view_stack(truth, axis)
        everything = {j: np.ones(stack.shape[1:], bool) for j in range(stack.shape[0])}
        before = state.label.copy()
        state.paint_views(1, axis, everything, {j: {"source": "propagated"} for j in everything}, {})
        assert np.array_equal(state.view_mask(1, corrected_axis, k), person), axis
        elsewhere = np.ones(truth.shape, bool)
        view_stack(elsewhere, corrected_axis)[k] = False
        assert (state.label[elsewhere] == 1).all()  # the run painted every voxel but the person's view
        state.undo()
        assert np.array_equal(state.label, before)
    # on the corrected view's own axis a run repaints other views only (the engine and propagation skip it)
    assert state.records[1]["slices"][f"{corrected_axis}:{k}"]["source"] == "person"


def walk_gone_wrong(make_client):
    """builtin:lung-gtv pat_4 in a session: a box on the GTV's largest slice, committed and propagated both ways;
    10 slices up the walk has lost the tumour. Returns (client, image id, truth, object id, the session's label
    array, the object before any correction, that slice j, and the centre (x, y) of what it missed there)."""
    from scipy import ndimage

    truth = lung_case("pat_4").label == 1
    z = int(truth.sum((1, 2)).argmax())
    client = make_client("builtin:lung-gtv")
    vid = "lung-gtv_pat_4"
    view = {"image": vid, "axis": 0, "slice": z}
    client.post("/api/predict", json={**view, "box": tight(truth[z])})
    oid = client.post("/api/commit", json=view).json()["committed"]["id"]
    client.post("/api/propagate", json={**view, "object": oid})
    lab = client.app.state.workspace.state(vid).label
    before = lab == oid
    j = z + 10
    assert dice(before[j], truth[j]) < 0.2 and truth[j].sum() > 900  # the walk went wrong here
    depth = ndimage.distance_transform_edt(truth[j] & ~before[j])
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    return client, vid, truth, oid, lab, before, j, x, y


@pytest.mark.slow
def test_lung_gtv_click_correction_repropagates_through_the_api(make_client):
    """Box on the GTV's largest slice, propagate; 10 slices up the walk has lost the tumour (it keeps 66 of its
    954 px): one positive click at the centre of the missed part corrects that slice, and propagating from it
    fixes its neighbours above while the corrected slice and everything below it stay."""
    client, vid, truth, oid, lab, before, j, x, y = walk_gone_wrong(make_client)
    at_j = {"image": vid, "axis": 0, "slice": j}
    client.post("/api/predict", json={**at_j, "points": [[float(x), float(y), 1]]})
    client.post("/api/correct", json={**at_j, "object": oid})
    corrected = (lab[j] == oid).copy()
    assert dice(corrected, truth[j]) > 0.8
    # up, where it went wrong (re-propagating down too would redo the walk's slices 27..35 with the plain step)
    rerun = client.post("/api/propagate", json={**at_j, "object": oid, "direction": "up"}).json()
    after = lab == oid
    assert np.array_equal(after[j], corrected) and np.array_equal(after[:j], before[:j])
    assert rerun["stops"][0]["reason"] == "area below minimum" and rerun["visited"][0]["slice"] == j + 1
    for k in (j + 1, j + 2, j + 3):  # the tumour is found again above the corrected slice
        assert dice(after[k], truth[k]) > dice(before[k], truth[k]) + 0.3, k
    assert dice(after, truth) > dice(before, truth)
    record = next(o for o in rerun["objects"] if o["id"] == oid)
    assert record["slices"][f"0:{j}"]["source"] == "person" and len(record["propagations"]) == 2


def test_the_cvpr25_protocol_through_the_api_equals_evaluate_volume(make_client, predictor, cache_dir, tmp_path):
    """The annotator's 3D box and clicks are the engine of `evaluate-volume --protocol cvpr25`: on a real CT
    volume (NIfTI, x axis reversed), the box and the protocol's 5 clicks sent through POST /api/box3d and
    /api/click3d give, step by step, the masks whose Dice and voxel counts are evaluate-volume's rows; every
    clicked view is kept as the person's, and undo takes back one click."""
    import csv
    import io

    from PIL import Image

    from medsamkit.io.volume_reader import read_label_volume, read_volume
    from medsamkit.volumes import EvaluateVolumeConfig, evaluate_volumes
    from medsamkit.volumes.engine import Box3D
    from volume_crop import write_flipped_gtv

    image, label = write_flipped_gtv(tmp_path)
    out = tmp_path / "protocol"
    evaluate_volumes(EvaluateVolumeConfig(data=f"{image}::{label}", out=str(out), protocol="cvpr25", window="lung",
                                          cache=str(cache_dir), show_progress=False), predictor)
    rows = list(csv.DictReader((out / "steps.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(6))
    truth = read_label_volume(str(label), read_volume(str(image))).array == 1

    client = make_client(f"{image}::{label}", window="lung")
    vid = client.get("/api/info").json()["images"][0]["id"]

    def mask_of(oid: int) -> np.ndarray:
        views = []
        for k in range(truth.shape[0]):
            png = client.get(f"/api/volume/{vid}/labels", params={"axis": 0, "slice": k})
            rgba = np.asarray(Image.open(io.BytesIO(png.content)))
            views.append((rgba[..., 0].astype(int) + 256 * rgba[..., 1].astype(int)) == oid)
        return np.stack(views)

    b = Box3D.of_truth(truth)
    reply = client.post("/api/box3d", json={"image": vid, "box3d": [b.z_min, b.z_max, b.z, *b.box]})
    assert reply.status_code == 200, reply.text
    oid = reply.json()["object"]
    assert oid == 2  # the label file's GTV is object 1
    steps = [mask_of(oid)]
    for row in rows[1:]:
        z, y, x, positive = int(row["click_z"]), int(row["click_y"]), int(row["click_x"]), row["click_label"] == "1"
        reply = client.post("/api/click3d", json={"image": vid, "object": oid, "slice": z, "x": x, "y": y,
                                                  "positive": positive})
        assert reply.status_code == 200, reply.text
        steps.append(mask_of(oid))
        assert reply.json()["objects"][-1]["slices"][f"0:{z}"]["source"] == "person"
    for row, mask in zip(rows, steps):
        assert int(mask.sum()) == int(row["pred_voxels"]), row["step"]
        assert dice(mask, truth) == pytest.approx(float(row["dice"]), abs=1e-6)
    client.post("/api/undo", json={"image": vid})
    np.testing.assert_array_equal(mask_of(oid), steps[-2])


def test_lung_gtv_one_3d_click_corrects_a_wrong_slice_and_its_neighbours(make_client):
    """The same walk gone wrong 10 slices up (see above): one positive click through POST /api/click3d corrects
    that slice and the 3D engine re-propagates from it, so the slices above find the tumour again without a
    second request; the slices below the click stay as they were."""
    client, vid, truth, oid, lab, before, j, x, y = walk_gone_wrong(make_client)
    reply = client.post("/api/click3d", json={"image": vid, "object": oid, "slice": j, "x": float(x), "y": float(y)})
    assert reply.status_code == 200, reply.text
    after = lab == oid
    assert dice(after[j], truth[j]) > 0.8 and j + 1 in reply.json()["changed"]
    for k in (j + 1, j + 2):  # the neighbours above are fixed by the same click
        assert dice(after[k], truth[k]) > dice(before[k], truth[k]) + 0.3, k
    assert np.array_equal(after[: j - 3], before[: j - 3])
    record = next(o for o in reply.json()["objects"] if o["id"] == oid)
    assert record["slices"][f"0:{j}"]["source"] == "person" and record["propagations"][-1]["kind"] == "click"


def test_the_3d_engine_answers_clicks_with_the_sessions_strategy_and_ranking(make_client, tmp_path):
    """`annotate --clicks native --click-ranker RUN`: a click through POST /api/click3d is answered by the 3D
    engine with the session's strategy (here the decoder's native point path on that view: box of what is there
    plus the click, not the click search's answer) and the session's ranking."""
    import json

    from medsamkit.prompts.clicks import ClickAnswerer
    from medsamkit.prompts.ranking import FEATURES, FITTED_RANKER
    from medsamkit.prompts.search_settings import RANKING_FORMAT, SearchSettings
    from medsamkit.prompts.simulate import Prompt, tight_box

    ranking = tmp_path / "ranking.json"
    ranking.write_text(json.dumps({"format": RANKING_FORMAT, "features": list(FEATURES), "ranker": list(FITTED_RANKER),
                                   "offset": 0.3, "reach": 3.0}))
    client, vid, truth, oid, lab, before, j, x, y = walk_gone_wrong(
        lambda source: make_client(source, clicks="native", click_ranker=str(ranking)))
    engines = client.app.state.workspace.engines3d
    assert engines.settings.clicks == "native" and engines.settings.search == SearchSettings.from_file(ranking)
    reply = client.post("/api/click3d", json={"image": vid, "object": oid, "slice": j, "x": float(x), "y": float(y)})
    assert reply.status_code == 200, reply.text
    engine = next(iter(engines._engines.values()))
    assert engine.answerer.strategy == "native" and engine.answerer.settings == SearchSettings.from_file(ranking)
    predictor = engine.embedder.use(j)
    click = Prompt(box=tight_box(before[j]), points=np.array([[x, y]], dtype=np.float32), labels=np.array([1]))
    native = ClickAnswerer(predictor, "native").answer([click]).masks[0, 0]
    searched = ClickAnswerer(predictor, "search").answer([click], parents=[(before[j], 1.0)]).masks[0, 0]
    assert np.array_equal(lab[j] == oid, native) and not np.array_equal(native, searched)
