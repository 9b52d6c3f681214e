"""The one results store (core/results.py) and the behaviour every resumable verb gets from it: the same
one-line refusal of a folder that holds another configuration, resume of finished cases, unfinished rows
dropped, step tables cut back, torn writes ignored."""

from __future__ import annotations

import re
from dataclasses import asdict

import pytest

from medsamkit.core.errors import InputError
from medsamkit.core.results import RunStore, key_differences, read_rows

TABLES = {"rows": ["case", "object", "dice"], "steps": ["step", "loss"]}


def _store(out, **identity):
    return RunStore(out, {"data": "d", "seed": 0, **identity}, TABLES, step_tables=("steps",))


def test_cases_resume_and_rows_of_an_unfinished_case_are_dropped(tmp_path):
    store = _store(tmp_path)
    store.add_case("a", {"rows": [{"case": "a", "object": 1, "dice": 0.5}]})
    store.append("rows", [{"case": "b", "object": 1, "dice": 0.9}])  # b was interrupted before add_case
    again = _store(tmp_path)
    assert again.is_done("a") and not again.is_done("b")
    assert [r["case"] for r in again.rows("rows")] == ["a"]


def test_a_torn_last_line_of_done_is_not_a_finished_case(tmp_path):
    store = _store(tmp_path)
    store.add_case("a", {"rows": [{"case": "a", "object": 1, "dice": 0.5}]})
    with (tmp_path / "done.txt").open("a") as fh:
        fh.write("b")  # the process died mid-line
    assert _store(tmp_path).done == {"a"}


def test_another_configuration_is_refused_naming_the_keys(tmp_path):
    _store(tmp_path)
    with pytest.raises(InputError, match=re.escape(f"{tmp_path}: holds results of a different configuration "
                                                   "(seed differ); use another --out folder")):
        _store(tmp_path, seed=1)
    assert (tmp_path / "config.json").read_text().count('"seed": 0') == 1  # the refused run wrote nothing


def test_keys_limit_what_must_match_and_differences_replace_the_rule(tmp_path):
    RunStore(tmp_path / "k", {"data": "d", "note": "x"}, {}, keys=("data",))
    RunStore(tmp_path / "k", {"data": "d", "note": "y"}, {}, keys=("data",))  # note is not an identity key
    with pytest.raises(InputError, match="data differ"):
        RunStore(tmp_path / "k", {"data": "e"}, {}, keys=("data",))
    RunStore(tmp_path / "r", {"epochs": 3}, {}, differences=lambda old, new: [])
    RunStore(tmp_path / "r", {"epochs": 5}, {}, differences=lambda old, new: [])  # a schedule may grow


def test_a_key_an_older_folder_lacks_reads_as_its_default(tmp_path):
    """A folder written before ``start`` existed resumes as a box start and refuses a clicks start."""
    differ = key_differences(("data", "start"), {"start": "box"})
    RunStore(tmp_path, {"data": "d"}, {})
    RunStore(tmp_path, {"data": "d", "start": "box"}, {}, differences=differ)
    with pytest.raises(InputError, match="start differ"):
        RunStore(tmp_path, {"data": "d", "start": "clicks"}, {}, differences=differ)
    assert differ({"data": "d"}, {"data": "d", "start": "box"}) == []
    assert differ({"data": "d"}, {"data": "d", "start": "clicks"}) == ["start"]
    assert key_differences(("start",))({}, {"start": "box"}) == ["start"]  # no default: a missing key differs


def test_step_tables_are_cut_back_to_a_checkpoint(tmp_path):
    store = _store(tmp_path)
    store.append("steps", [{"step": i, "loss": 1.0 / (i + 1)} for i in range(5)])
    store.keep_rows("steps", lambda r: int(r["step"]) < 3)
    assert [r["step"] for r in _store(tmp_path).rows("steps")] == ["0", "1", "2"]


def test_a_table_with_old_columns_is_rewritten_with_the_new_ones(tmp_path):
    (tmp_path / "rows.csv").write_text("case,object\na,1\n")
    (tmp_path / "done.txt").write_text("a\n")
    store = _store(tmp_path)
    store.add_case("b", {"rows": [{"case": "b", "object": 2, "dice": 0.7}]})
    assert read_rows(tmp_path / "rows.csv") == [{"case": "a", "object": "1", "dice": ""},
                                                {"case": "b", "object": "2", "dice": "0.7"}]


def test_a_file_where_the_folder_should_be_is_one_clear_error(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(InputError, match="output must be a folder"):
        _store(tmp_path / "out")


# --- every resumable verb refuses another configuration the same way, before any work --------------------


def _evaluate(out, seed):
    from medsamkit.evaluation.config import EvaluateConfig
    from medsamkit.evaluation.engine import open_store

    return open_store(EvaluateConfig(data="builtin:dsb-nuclei", out=str(out), seed=seed))


def _evaluate_volume(out, seed):
    from medsamkit.volumes.evaluate import EvaluateVolumeConfig, VolumeRun

    return VolumeRun(EvaluateVolumeConfig(data="builtin:lung-gtv", out=str(out), seed=seed)).store


def _finetune(out, seed):
    from medsamkit.training import FinetuneConfig
    from medsamkit.training.checkpoints import open_store

    return open_store(out, asdict(FinetuneConfig(data=["builtin:dsb-nuclei"], out=str(out), seed=seed)), ["epoch"])


def _unet_train(out, seed):
    from medsamkit.samaug.unet_train import UNetConfig, open_run

    return open_run(UNetConfig(data="builtin:dsb-nuclei", out=str(out), seed=seed))


def _samaug_priors(out, seed):
    from medsamkit.samaug.everything import EverythingConfig
    from medsamkit.samaug.priors import PriorsConfig, open_run

    return open_run(PriorsConfig(data="builtin:dsb-nuclei", out=str(out),
                                 everything=EverythingConfig(pred_iou_thresh=0.5 + seed / 10)))


@pytest.mark.parametrize("open_run", [_evaluate, _evaluate_volume, _finetune, _unet_train, _samaug_priors],
                         ids=["evaluate", "evaluate-volume", "finetune", "unet-train", "samaug-priors"])
def test_every_verb_resumes_its_own_folder_and_refuses_another_configuration(tmp_path, open_run):
    out = tmp_path / "run"
    assert isinstance(open_run(out, 0), RunStore)
    open_run(out, 0)  # the same settings: a resume
    with pytest.raises(InputError) as err:
        open_run(out, 1)
    assert re.fullmatch(re.escape(str(out)) + r": holds results of a different configuration \([a-z_., ]+ differ\); "
                        r"use another --out folder", str(err.value))
