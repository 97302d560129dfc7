"""The tree keeps its shape: settings read in one place, imports down the layers, no import cycles
between packages, short functions.

These read the source, not the behaviour: each fails on the first change that breaks a rule the
restructuring set (docs/architecture.md, "Layout").
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("serving", "kernels", "training", "loadtest", "benchmarks")
# Layers, bottom first: a module may import from its own layer and those below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kernels", "serving.config", "serving.errors", "serving.schemas", "serving.files", "serving.net",
     "serving.proto", "serving.terminal", "serving.stopping", "serving.auth"),
    ("serving.triton", "serving.index", "serving.data", "serving.pipeline.features", "serving.metrics",
     "serving.feedback"),
    ("serving.pipeline",),
    ("serving.repository",),
    ("serving.batching", "serving.service", "serving.http_api", "serving.grpc_api", "serving.app",
     "serving.ray_runtime", "serving.ray_hardening", "serving.feedback.commands"),
    ("serving.startup",),
    ("training",),
    ("loadtest",),
    ("benchmarks",),
    ("serving.cli",),
)
# The ``rankserve`` command sits on top of every layer and may import everything; apart from it,
# nothing under serving imports these.
ABOVE_THE_SERVER = ("training", "loadtest", "benchmarks")
CLI = "serving.cli"


def _sources(*extra: str) -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "ranker_pb2" not in p.name]
    return files + [ROOT / name for name in extra]


def _layer(module: str) -> int:
    if module == "serving":  # the package itself holds only the version: below everything
        return 0
    best, where = "", -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, where = prefix, i
    if where < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return where


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported_names(path: Path) -> Iterator[str]:
    """Every name ``path`` imports, at any depth (inside functions and ``TYPE_CHECKING`` blocks too):
    ``import a.b`` gives ``a.b``; ``from a.b import c`` gives ``a.b.c`` (a module or not); relative
    imports are resolved against the module's package."""
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*package[:len(package) - node.level + 1], *([node.module] if node.module else [])]) \
                if node.level else (node.module or "")
            yield from (f"{base}.{a.name}" for a in node.names)


def _tree() -> dict[str, Path]:
    """Module name -> file, for every module of the packages (the Triton model and generated code aside)."""
    return {_module_name(p): p for p in _sources() if "_model" not in p.parts}


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports (``from a import b`` names ``a.b`` when that is a
    module, else ``a``)."""
    tree = _tree()
    graph: dict[str, set[str]] = {}
    for me, path in tree.items():
        edges = graph.setdefault(me, set())
        for name in _imported_names(path):
            while name and name not in tree:
                name = name.rpartition(".")[0]
            if name and name != me:
                edges.add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) through each node that lies on one, found by depth-first search."""
    found: list[list[str]] = []
    on_cycle: set[str] = set()
    for start in sorted(graph):
        if start in on_cycle:
            continue
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen = {start}
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    found.append([*path, start])
                    on_cycle.update(path)
                    stack.clear()
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return found


def _package(module: str) -> str:
    """The package a module counts in: its top-level package, the ``rankserve`` command apart."""
    return CLI if module == CLI else module.split(".")[0]


def test_every_rankserve_variable_is_a_declared_setting() -> None:
    declared = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    used: dict[str, set[str]] = {}
    docs = [str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")]
    for path in _sources("Dockerfile", "Makefile", "deploy/rayservice.yaml", "README.md", *docs):
        for name in re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    unknown = {name: sorted(where) for name, where in used.items() if name not in declared}
    assert not unknown, f"undeclared settings (add them to serving.config.Settings): {unknown}"


def test_only_the_config_module_reads_rankserve_variables_from_the_environment() -> None:
    reads = re.compile(r"(environ|getenv)\W.*" + ENV_PREFIX)
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in _sources() if p != ROOT / "serving" / "config.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if reads.search(line)]
    assert offenders == []


def test_imports_run_down_the_layers() -> None:
    upward = [f"{me} imports {name}" for me, names in _graph().items() for name in sorted(names)
              if _layer(name) > _layer(me)]
    assert upward == []


def test_nothing_under_serving_but_the_cli_imports_training_loadtest_or_benchmarks() -> None:
    """Not even lazily inside a function: the server never reaches above itself."""
    offenders = [f"{path.relative_to(ROOT)} imports {name}" for path in (ROOT / "serving").rglob("*.py")
                 if _module_name(path) != CLI
                 for name in _imported_names(path) if name.split(".")[0] in ABOVE_THE_SERVER]
    assert offenders == []


def test_no_import_cycle_between_packages() -> None:
    """``training`` may use serving's feature assembly; nothing it imports imports ``training`` back
    (nor does any other package of the tree close a circle); ``serving.cli`` counts on its own, on top."""
    packages: dict[str, set[str]] = {}
    why: dict[tuple[str, str], str] = {}
    for me, names in _graph().items():
        for name in names:
            a, b = _package(me), _package(name)
            if a != b:
                packages.setdefault(a, set()).add(b)
                why.setdefault((a, b), f"{me} imports {name}")
    cycles = [" -> ".join(c) + ": " + "; ".join(why[(x, y)] for x, y in zip(c, c[1:], strict=False))
              for c in _cycles(packages)]
    assert cycles == []


def test_no_import_cycle_between_the_modules_of_training() -> None:
    graph = {m: {n for n in names if n.split(".")[0] == "training"} for m, names in _graph().items()
             if m.split(".")[0] == "training"}
    assert [" -> ".join(c) for c in _cycles(graph)] == []


def test_the_python_backend_model_imports_nothing_of_rankserve() -> None:
    text = (ROOT / "serving" / "triton" / "_model" / "model.py").read_text()
    assert "serving" not in {n.split(".")[0] for n in re.findall(r"^(?:from|import) ([\w.]+)", text, re.M)}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_longer_than_80_lines(package: str) -> None:
    long = []
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


@pytest.mark.parametrize("package", ("serving", "loadtest", "benchmarks"))
def test_every_module_says_what_it_owns(package: str) -> None:
    missing = [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py")
               if "ranker_pb2" not in p.name and p.name != "__init__.py"
               and "Owns:" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert missing == []
