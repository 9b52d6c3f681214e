"""The benchmark scripts cannot silently break: they import only public names of medsamkit, each has a --smoke
size, `make bench-smoke` (run by CI after `make test`) runs every one of them, and those that run a model in their
own process set it up as the CLI does. The scripts are parsed with ast, never imported (tests do not import from
benchmarks/)."""

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


# Importing any of these runs a model in the script's own process (the others run the CLI in a subprocess, or no model)
IN_PROCESS = ("medsamkit.evaluation", "medsamkit.volumes", "medsamkit.models", "medsamkit.predictor",
              "medsamkit.annotate", "medsamkit.finetune", "medsamkit.samaug.everything", "medsamkit.samaug.unet",
              "_upstream")


def calls_and_imports(source: str) -> tuple[set[str], set[str]]:
    """The names ``source`` calls (plain names and attributes) and what it imports (modules, and module.name for
    every name imported from one)."""
    tree = ast.parse(source)
    calls = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))}
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module:
            modules |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}
    return calls, modules


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmarks_running_a_model_in_process_set_up_the_runtime(script):
    # cvpr25_3d.py set only the thread count: without the allocator setting the CLI applies, its encoder ran 1.3x
    # slower and the protocol's seconds per class were the API's, not what `evaluate-volume` takes
    calls, modules = calls_and_imports(script.read_text())
    if "set_num_threads" in calls or any(m.startswith(IN_PROCESS) for m in modules):
        assert "setup" in calls and "medsamkit.core.runtime" in modules, \
            f"{script.name}: call medsamkit.core.runtime.setup() (the CLI's allocator setting and threads)"


def test_the_runtime_check_sees_a_thread_count_set_alone():
    calls, modules = calls_and_imports("import torch\ndef main():\n    torch.set_num_threads(2)\n")
    assert "set_num_threads" in calls and "setup" not in calls and "medsamkit.core.runtime" not in modules


def test_ci_runs_bench_smoke_after_the_tests():
    makefile = (REPO / "Makefile").read_text()
    assert "\nbench-smoke: install\n" in makefile and "tools/bench_smoke.py" in makefile
    steps = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert steps.index("make bench-smoke") > steps.index("make test")
