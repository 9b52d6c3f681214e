"""The layout rules (docs/architecture.md), checked on the package source by tools/check_layout.py:
no import cycle (imports inside functions included), imports flow down the layers, modules <= 400 lines,
functions <= 80 lines, only annotate/http imports the web framework, annotate's layers import only the one
below, no ``kind`` string dispatch in annotate; and the checker itself finds each kind of violation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def layout():
    spec = importlib.util.spec_from_file_location("check_layout", ROOT / "tools" / "check_layout.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layout"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(layout):
    return layout.check(ROOT / "src" / "medsamkit")


def test_no_import_cycles(report):
    assert report["modules"] > 50
    assert report["cycles"] == []


def test_imports_flow_down_the_layers(report):
    assert report["upward_imports"] == []


def test_modules_and_functions_are_small(report):
    assert report["long_modules"] == []
    assert report["long_functions"] == []


def test_the_checker_finds_a_cycle_inside_a_function_an_upward_import_and_a_long_function(layout, tmp_path):
    pkg = tmp_path / "medsamkit"
    (pkg / "core").mkdir(parents=True)
    (pkg / "evaluation").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "evaluation" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from medsamkit.core import b\n")
    (pkg / "core" / "b.py").write_text("from medsamkit.core.a import f\nfrom medsamkit.evaluation import c\n")
    body = "".join(f"    x{i} = {i}\n" for i in range(85))
    (pkg / "evaluation" / "c.py").write_text(f"def long():\n{body}")
    found = layout.check(pkg)
    assert found["cycles"] == [["medsamkit.core.a", "medsamkit.core.b"]]
    assert found["upward_imports"] == ["medsamkit.core.b -> medsamkit.evaluation.c"]
    assert found["long_functions"] == ["medsamkit.evaluation.c.long: 86 lines"]


def test_the_annotators_typed_seams_hold(report):
    assert report["web_imports"] == []
    assert report["annotate_layers"] == []
    assert report["kind_dispatch"] == []


def test_the_checker_finds_web_imports_skipped_annotate_layers_and_kind_dispatch(layout, tmp_path):
    pkg = tmp_path / "medsamkit"
    for part in ("core", "annotate", "annotate/model", "annotate/session", "annotate/http"):
        (pkg / part).mkdir(parents=True)
        (pkg / part / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "web.py").write_text("from starlette.responses import Response\n")
    (pkg / "annotate" / "model" / "host.py").write_text("def f():\n    from medsamkit.annotate.session import items\n")
    (pkg / "annotate" / "session" / "items.py").write_text("def g(item):\n    return item.kind == 'image'\n")
    (pkg / "annotate" / "http" / "app.py").write_text("import fastapi\nfrom medsamkit.annotate.model import host\n")
    found = layout.check(pkg)
    assert found["web_imports"] == ["medsamkit.core.web -> starlette.responses"]
    assert found["annotate_layers"] == ["medsamkit.annotate.http.app -> medsamkit.annotate.model.host",
                                        "medsamkit.annotate.model.host -> medsamkit.annotate.session.items"]
    assert found["kind_dispatch"] == ["medsamkit.annotate.session.items:2"]


def test_constructing_a_predictor_leaves_the_thread_count_alone(litemedsam):
    """Bug: Predictor.__init__ called runtime.setup(), changing torch's thread count for the whole process."""
    import torch

    from medsamkit.predictor import Predictor

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Predictor(litemedsam)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
