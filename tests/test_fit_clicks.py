"""`medsamkit fit-clicks` (training.click_ranking): the click search's ranking fitted to labelled data, on real
glands with the bundled model; the ranking file it writes, read back by evaluate, segment and annotate, and refused
in one line when it is not one."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from medsamkit.cli import main
from medsamkit.core.errors import InputError
from medsamkit.evaluation.click_ranking import (
    ClickRankingConfig,
    Sample,
    best_iou,
    cross_validate,
    first_iou,
    fit_weights,
)
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.run import evaluate
from medsamkit.io.images import read_image, read_label
from medsamkit.prompts.ranking import FEATURES, FITTED_RANKER, HAND_RANKER
from medsamkit.prompts.search_settings import RANKING_FORMAT, SearchSettings
from shared_data import require_data


@pytest.fixture(scope="module")
def glas_train():
    return require_data("glas", "GlaS train", "train/images") / "train"


def _ranking(path, **changes) -> str:
    spec = {"format": RANKING_FORMAT, "features": list(FEATURES), "ranker": list(FITTED_RANKER), "offset": 0.3,
            "reach": 3.0, "refine_sides": 2, **changes}
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.mark.parametrize("changes, says", [
    ({"format": "something else"}, "not a click ranking"),
    ({"features": ["predicted_iou"]}, "ranks on features"),
    ({"ranker": [1.0, 2.0]}, "needs 19 weights"),
    ({"ranker": [float("nan")] * 19}, "finite"),
    ({"reach": "far"}, "must be numbers"),
    ({"refine_sides": -1}, "refine_sides >= 0"),
    ({"sides": "big"}, "sides and aspects must be lists of numbers"),
    ({"sides": [8, -16]}, "must be positive"),
    ({"sides": []}, "at least one side"),
    ({"aspects": [1.0, 0]}, "must be positive"),
    ({"aspects": []}, "at least one side and aspect"),
    ({"aspects": "square"}, "aspects must be lists of numbers"),
    ({"sides": "12"}, "sides and aspects must be lists of numbers"),  # not the sides 1 and 2
    ({"window_factor": 0}, "must be positive"),
    ({"max_window": -8}, "max_window >= 0"),
    ({"max_window": "wide"}, "max_window an integer"),
    ({"similar": "high"}, "similar must be a list of similarity thresholds"),
    ({"similar": [0.5, 1.5]}, "similar must be a list of similarity thresholds"),
    ({"edge_weight": "strong"}, "edge_weight must be a number"),
])
def test_a_ranking_file_that_is_not_one_is_refused_in_one_line(tmp_path, changes, says):
    path = _ranking(tmp_path / "ranking.json", **changes)
    with pytest.raises(InputError, match=says) as err:
        SearchSettings.from_file(path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_unreadable_and_missing_ranking_files_name_the_file(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    for path in (tmp_path / "broken.json", tmp_path / "absent.json", tmp_path):  # a folder without ranking.json
        with pytest.raises(InputError, match="cannot read a click ranking"):
            SearchSettings.from_file(path)


def test_a_ranking_file_may_set_the_candidate_boxes_and_the_search_decodes_them(tmp_path, predictor):
    from medsamkit.io.datasets import open_dataset
    from medsamkit.prompts.search import candidate_boxes, search

    path = _ranking(tmp_path / "ranking.json", ranker=list(HAND_RANKER), offset=0.0, reach=0.0,
                    sides=[8, 16, 32, 64, 144], window_factor=1.25)
    settings = SearchSettings.from_file(path)
    assert settings.sides == (8.0, 16.0, 32.0, 64.0, 144.0) and settings.window_factor == 1.25
    assert SearchSettings.from_file(_ranking(tmp_path / "plain.json")).sides == SearchSettings().sides
    assert SearchSettings.from_file(_ranking(tmp_path / "cut.json", max_window=48)).max_window == 48
    assert SearchSettings.from_file(_ranking(tmp_path / "squares.json", aspects=[1])).aspects == (1.0,)
    # boxes grown from the image content: as the file says; none in a file written before them (fitted without)
    assert SearchSettings.from_file(_ranking(tmp_path / "grown.json", similar=[0.5])).similar == (0.5,)
    assert SearchSettings.from_file(tmp_path / "plain.json").similar == () != SearchSettings().similar
    # the edge term likewise: as the file says, none in a file written before it (fitted without it)
    assert SearchSettings.from_file(_ranking(tmp_path / "edges.json", edge_weight=0.25)).edge_weight == 0.25
    assert SearchSettings.from_file(tmp_path / "plain.json").edge_weight == 0.0 != SearchSettings().edge_weight
    # the search asks exactly those squares first: the candidates of a click (no aspects) are the 5 squares
    pred = predictor.set_image(next(open_dataset("builtin:dsb-nuclei").cases()).image)
    emb = pred.embedding
    click = np.array([[120.0, 130.0]], dtype=np.float32)
    cands, scores = search(pred.model, emb.features, emb.input_size, click, np.ones(1),
                           dataclasses.replace(settings, aspects=(1.0,), tighten=0))
    assert sorted(map(tuple, cands.boxes)) == sorted(map(tuple, candidate_boxes(click, emb.input_size, settings,
                                                                                aspects=(1.0,))))
    assert len(cands) == 5 and len(scores) == 5


def test_max_window_decodes_the_largest_box_on_a_window_of_that_size(predictor):
    import torch

    from medsamkit.io.datasets import open_dataset
    from medsamkit.models.local_decode import decode_local
    from medsamkit.prompts.search import decode_boxes

    pred = predictor.set_image(next(open_dataset("builtin:dsb-nuclei").cases()).image)
    feats = pred.embedding.features
    box = np.array([[20.0, 30.0, 211.0, 221.0]], dtype=np.float32)  # 192 model-input px: 72 tokens at 1.5x
    cut, _ = decode_boxes(pred.model, feats, box, SearchSettings(max_window=48))
    low, _, origin = decode_local(pred.model, feats, torch.from_numpy(box), None, 48, False)
    (ox, oy), span = origin[0].tolist(), low.shape[-1]
    assert torch.equal(cut[0, oy : oy + span, ox : ox + span], low[0, 0].float())
    whole, _ = decode_boxes(pred.model, feats, box, SearchSettings())  # the whole embedding
    assert not torch.equal(cut, whole) and (cut[0] > 0).sum() > 1000


def test_a_ranking_file_and_its_run_folder_give_the_same_settings(tmp_path):
    _ranking(tmp_path / "ranking.json")
    assert SearchSettings.from_file(tmp_path) == SearchSettings.from_file(tmp_path / "ranking.json")
    assert SearchSettings.from_file(tmp_path) == SearchSettings.fitted()


def _samples(rng, n: int, group: str) -> list[Sample]:
    """Candidates whose true IoU rises with their stability while the predicted IoU points the other way; the
    best candidate breaks the click in every fourth sample."""
    out = []
    for k in range(n):
        f = rng.uniform(0, 1, (12, len(FEATURES)))
        truth = f[:, FEATURES.index("stability")].copy()
        f[:, FEATURES.index("predicted_iou")] = 1 - truth + rng.normal(0, 0.05, 12)
        broken = np.zeros(12, dtype=bool)
        if k % 4 == 0:
            broken[np.argmax(truth)] = True
        out.append(Sample(group, "center", f, truth, broken, 0.0))
    return out


def test_the_fitted_ranking_learns_what_predicts_the_true_iou_and_never_picks_a_broken_click():
    rng = np.random.default_rng(0)
    train, test = _samples(rng, 40, "a"), _samples(rng, 40, "b")
    weights = fit_weights(train, tau=0.05)
    picked = [first_iou(s, weights) for s in test]
    best = [s.iou[~s.broken].max() for s in test]
    assert np.mean(picked) > 0.95 * np.mean(best)
    assert np.mean(picked) > np.mean([first_iou(s, HAND_RANKER) for s in test]) + 0.2
    assert all(not s.broken[np.argmax(s.iou == p)] for s, p in zip(test, picked))


def test_cross_validation_keeps_groups_whole_and_needs_as_many_as_folds(tmp_path):
    rng = np.random.default_rng(1)
    cfg = ClickRankingConfig(data="x", out=str(tmp_path), folds=2)
    with pytest.raises(InputError, match="needs at least --folds 2"):
        cross_validate(_samples(rng, 8, "only"), cfg)
    folds = cross_validate(_samples(rng, 8, "a") + _samples(rng, 8, "b"), cfg)
    assert folds["center"]["prompts"] == 16 and folds["center"]["fitted_iou"] > 0.8
    assert folds["center"]["default_iou"] == 0.0  # as the samples say
    # the headroom of any ranking: each click's best candidate honouring it, never below what the fit picked
    assert folds["center"]["best_candidate_iou"] >= folds["center"]["fitted_iou"]
    pairs = [(s, s.iou[~s.broken].max()) for s in _samples(rng, 4, "c")]
    assert all(best_iou(s) == top for s, top in pairs) and best_iou(pairs[0][0]) < pairs[0][0].iou.max()


def test_fit_clicks_on_real_glands_resumes_and_its_ranking_runs_in_evaluate_and_segment(tmp_path, glas_train):
    out = tmp_path / "fit"
    runner = CliRunner()
    args = ["fit-clicks", "--data", str(glas_train), "--max-images", "2", "--max-objects", "2", "--out", str(out)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    written = json.loads((out / "ranking.json").read_text())
    modes = written["cross_validation"]["modes"]
    assert set(modes) == {"center", "random1"} and modes["center"]["prompts"] == 4
    assert 0 < modes["center"]["default_iou"] <= 1 and 0 <= modes["random1"]["fitted_iou"] <= 1
    settings = SearchSettings.from_file(out)
    if written["chosen"] == "default":  # the fitted ranking lost the cross-validation: the file is the default
        assert settings == SearchSettings()
    else:
        assert settings.ranker != HAND_RANKER and settings.offset == 0.3 and settings.refine_sides == 0
    # the same command again reuses the samples; another object count is another run
    stamps = sorted(p.stat().st_mtime_ns for p in (out / "samples").glob("*.npz"))
    assert runner.invoke(main, args).exit_code == 0
    assert sorted(p.stat().st_mtime_ns for p in (out / "samples").glob("*.npz")) == stamps
    assert json.loads((out / "ranking.json").read_text())["ranker"] == written["ranker"]
    res = runner.invoke(main, args[:-4] + ["--max-objects", "3", "--out", str(out)])
    assert res.exit_code != 0 and "max_objects differ" in res.output
    # --coarse-to-fine: the same samples and weights, served in two decodes
    assert runner.invoke(main, args + ["--coarse-to-fine"]).exit_code == 0
    faster = SearchSettings.from_file(out)
    assert faster.ranker == settings.ranker
    assert faster.refine_sides == (2 if written["chosen"] == "fitted" else SearchSettings().refine_sides)

    # evaluate records the ranking, and a rewritten ranking file is another run
    ranking = _ranking(tmp_path / "mine.json")
    cfg = EvaluateConfig(data=str(glas_train), out=str(tmp_path / "eval"), prompts="random1", clicks="search",
                         click_ranker=ranking, max_images=1, max_objects=2, baseline=False, figures=False,
                         show_progress=False)
    summary = evaluate(cfg)
    assert summary["clicks"]["ranking"] == ranking and summary["objects"] == 2
    moved = tmp_path / "moved.json"  # the same ranking elsewhere: the run resumes (a ranking is its content)
    moved.write_bytes((tmp_path / "mine.json").read_bytes())
    assert evaluate(dataclasses.replace(cfg, click_ranker=str(moved)))["table"] == summary["table"]
    _ranking(tmp_path / "mine.json", reach=2.0)
    with pytest.raises(InputError, match="click_ranker_sha256"):
        evaluate(cfg)

    # segment: a click alone with the fitted ranking makes a mask holding it
    image = sorted((glas_train / "images").iterdir())[0]
    label = read_label(sorted((glas_train / "labels").iterdir())[0])
    ys, xs = np.nonzero(label == np.bincount(label[label > 0]).argmax())
    x, y = int(np.median(xs)), int(np.median(ys))
    mask_path = tmp_path / "mask.npy"
    res = runner.invoke(main, ["segment", str(image), "--point", f"{x},{y}", "--click-ranker", ranking, "-o",
                               str(mask_path)])
    assert res.exit_code == 0, res.output
    mask = np.load(mask_path)
    assert mask.shape == read_image(image).shape[:2] and mask[y, x] == 1
    res = runner.invoke(main, ["segment", str(image), "--point", f"{x},{y}", "--click-ranker",
                               str(tmp_path / "nope.json"), "-o", str(mask_path)])
    assert res.exit_code != 0 and "cannot read a click ranking" in res.output


def test_the_annotator_answers_clicks_with_the_given_ranking(tmp_path, predictor):
    """A click without a box on the page is the click search's answer under the ranking file given to annotate."""
    pytest.importorskip("fastapi")
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from medsamkit.annotate.http.app import create_app
    from medsamkit.annotate.session.config import AnnotateConfig
    from medsamkit.annotate.session.workspace import Workspace
    from medsamkit.core.objects import extract_objects
    from medsamkit.io.datasets import open_dataset
    from medsamkit.prompts.clicks import ClickAnswerer
    from medsamkit.prompts.simulate import Prompt

    ranking = _ranking(tmp_path / "ranking.json")
    with pytest.raises(InputError, match="cannot read a click ranking"):
        Workspace(AnnotateConfig("builtin:dsb-nuclei", out=str(tmp_path / "bad"), click_ranker=str(tmp_path / "x")))
    ws = Workspace(AnnotateConfig("builtin:dsb-nuclei", out=str(tmp_path / "ann"), click_ranker=ranking))
    client = TestClient(create_app(ws, None), base_url="http://127.0.0.1")
    case = next(open_dataset("builtin:dsb-nuclei").cases())
    predictor.set_image(case.image)
    fitted = ClickAnswerer(predictor, "search", SearchSettings.from_file(ranking))
    default = ClickAnswerer(predictor, "search")
    rng = np.random.default_rng(0)
    differ = 0
    for obj in [o for o in extract_objects(case.label) if o.area >= 100][:6]:
        ys, xs = np.nonzero(obj.mask(case.label.shape))
        k = rng.integers(len(xs))
        x, y = int(xs[k]), int(ys[k])  # a random click inside the nucleus
        reply = client.post("/api/predict", json={"image": "dsb-nuclei_img2d", "points": [[x, y, 1]]})
        assert reply.status_code == 200, reply.text
        page = np.asarray(Image.open(io.BytesIO(base64.b64decode(reply.json()["masks"][0])))) > 127
        prompt = [Prompt(None, np.array([[x, y]], dtype=np.float32), np.array([1], dtype=np.int32))]
        assert np.array_equal(page, fitted.answer(prompt).best()[0][0])
        differ += not np.array_equal(page, default.answer(prompt).best()[0][0])
        client.post("/api/clear", json={"image": "dsb-nuclei_img2d"})
    assert differ >= 1  # the ranking changed some answers: it is the one in use
