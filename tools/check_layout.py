"""Checks the package layout rules: no import cycle (imports inside functions included), imports only flow
down the layers, no module over 400 lines, no function over 80 lines; and the annotator's typed seams: only
``annotate/http`` imports the web framework, ``annotate``'s layers (model < session < http) each import only
the one below, and nothing in ``annotate`` dispatches on a ``kind`` string. Prints JSON; exit 1 on a violation.

Usage: python tools/check_layout.py [SRC_ROOT]   (default: src/medsamkit next to this file's parent)
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# Layer of each top-level part of the package (docs/architecture.md): a module may import from its own
# layer's other packages only where noted below, and from any lower layer; never from a higher one.
LAYERS = {
    "core": 0, "metrics": 1, "io": 1, "models": 2, "predictor": 3, "prompts": 4, "embedding": 5,
    "segment": 6, "evaluation": 6, "training": 6, "samaug": 6, "volumes": 6, "annotate": 7,
    "distributed": 7, "cli": 8, "__main__": 9, "": 0,
}
# Workflow packages that may use another workflow (one direction only).
ALLOWED_SIDEWAYS = {("annotate", "samaug"), ("annotate", "training"), ("annotate", "volumes"),
                    ("distributed", "evaluation"), ("distributed", "samaug"), ("distributed", "volumes"),
                    ("distributed", "embedding"), ("annotate", "evaluation")}


# The annotator's three layers, each importing only itself and the one below (docs/architecture.md).
ANNOTATE_LAYERS = ("model", "session", "http")
WEB_FRAMEWORK = ("fastapi", "starlette", "uvicorn", "pydantic")


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package root."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, known: dict[str, Path], package: str) -> set[str]:
    """Modules of the package that `path` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` depends on pkg.mod; `from pkg import name` on pkg itself
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        for name in names:
            if not name.startswith(package):
                continue
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def part_of(module: str) -> str:
    """The top-level part of the package a module belongs to ('' for the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go up the layers (or sideways between workflows without an allowed direction)."""
    bad = []
    for src, targets in graph.items():
        a = part_of(src)
        for dst in targets:
            b = part_of(dst)
            if a == b or b == "":
                continue
            la, lb = LAYERS.get(a, 99), LAYERS.get(b, 99)
            if lb > la or (lb == la and (a, b) not in ALLOWED_SIDEWAYS):
                bad.append(f"{src} -> {dst}")
    return sorted(bad)


def sizes(known: dict[str, Path]) -> tuple[list[str], list[str]]:
    """Modules over MAX_MODULE_LINES and functions over MAX_FUNCTION_LINES."""
    long_modules, long_functions = [], []
    for name, path in known.items():
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name}: {length} lines")
    return long_modules, long_functions


def web_imports(known: dict[str, Path], package: str) -> list[str]:
    """Modules outside ``annotate.http`` that import the web framework (fastapi, starlette, uvicorn, pydantic)."""
    bad = []
    for name, path in known.items():
        if name.startswith(f"{package}.annotate.http"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            found = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            bad += [f"{name} -> {f}" for f in found if f.split(".")[0] in WEB_FRAMEWORK]
    return sorted(set(bad))


def annotate_layer(module: str, package: str) -> int | None:
    """The annotate layer (index in ANNOTATE_LAYERS) of a module, None outside them."""
    parts = module.split(".")
    if parts[:2] != [package, "annotate"] or len(parts) < 3 or parts[2] not in ANNOTATE_LAYERS:
        return None
    return ANNOTATE_LAYERS.index(parts[2])


def annotate_layer_imports(graph: dict[str, set[str]], package: str) -> list[str]:
    """Imports inside ``annotate`` that skip a layer or go up (model -> session, http -> model, ...)."""
    bad = []
    for src, targets in graph.items():
        a = annotate_layer(src, package)
        for dst in targets:
            b = annotate_layer(dst, package)
            if a is not None and b is not None and b not in (a, a - 1):
                bad.append(f"{src} -> {dst}")
    return sorted(bad)


def kind_dispatch(known: dict[str, Path], package: str) -> list[str]:
    """Comparisons of a ``kind`` with a string inside ``annotate`` (2D / 3D is the item's type, not a string)."""
    bad = []
    for name, path in known.items():
        if not name.startswith(f"{package}.annotate"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            names_kind = any(isinstance(x, ast.Attribute) and x.attr == "kind" or isinstance(x, ast.Name)
                             and x.id == "kind" for x in sides)
            strings = any(isinstance(x, ast.Constant) and isinstance(x.value, str) for x in sides)
            if names_kind and strings:
                bad.append(f"{name}:{node.lineno}")
    return sorted(bad)


def check(root: Path) -> dict:
    """All layout findings for the package at `root`."""
    known = modules(root)
    graph = {m: imports(p, known, root.name) - {m} for m, p in known.items()}
    long_modules, long_functions = sizes(known)
    return {"modules": len(known), "cycles": cycles(graph), "upward_imports": upward_imports(graph),
            "long_modules": long_modules, "long_functions": long_functions,
            "web_imports": web_imports(known, root.name),
            "annotate_layers": annotate_layer_imports(graph, root.name),
            "kind_dispatch": kind_dispatch(known, root.name)}


RULES = ("cycles", "upward_imports", "long_modules", "long_functions", "web_imports", "annotate_layers",
         "kind_dispatch")


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "medsamkit"
    report = check(root)
    print(json.dumps(report, indent=2))
    return int(any(report[k] for k in RULES))


if __name__ == "__main__":
    sys.exit(main())
