"""The benchmark scripts cannot silently break: they import only public names of medsamkit, each has a --smoke
size, and `make bench-smoke` (run by CI after `make test`) runs every one of them. The scripts are parsed with
ast, never imported (tests do not import from benchmarks/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def private_imports(source: str) -> list[str]:
    """Every ``medsamkit`` import in ``source`` that names a private module or attribute (a leading underscore,
    dunders aside), at module level or inside functions."""
    def private(part: str) -> bool:
        return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "medsamkit"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medsamkit":
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found += [n for n in names if any(private(part) for part in n.split("."))]
    return found


def test_the_private_import_check_finds_private_names():
    code = ("import medsamkit._x\nfrom medsamkit.evaluation.engine import _case_key, evaluate\n"
            "def f():\n    from medsamkit.core import __version__, _hidden\n")
    assert private_imports(code) == ["medsamkit._x", "medsamkit.evaluation.engine._case_key",
                                     "medsamkit.core._hidden"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmarks_import_only_public_names(script):
    assert private_imports(script.read_text()) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_has_a_smoke_size(script):
    calls = {n.func.id for n in ast.walk(ast.parse(script.read_text()))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"add_smoke", "apply_smoke"} <= calls, f"{script.name}: no --smoke (benchmarks/_shared.py add_smoke)"


def test_ci_runs_bench_smoke_after_the_tests():
    makefile = (REPO / "Makefile").read_text()
    assert "\nbench-smoke: install\n" in makefile and "tools/bench_smoke.py" in makefile
    steps = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert steps.index("make bench-smoke") > steps.index("make test")
