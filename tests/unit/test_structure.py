"""The tree keeps its shape: settings read in one place, imports down the layers, short functions.

These read the source, not the behaviour: each fails on the first change that breaks a rule the
restructuring set (docs/architecture.md, "Layout").
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from serving.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("serving", "kernels", "training", "loadtest")
# Layers, bottom first: a module may import from its own layer and those below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("serving.config", "serving.errors", "serving.schemas", "serving.files", "serving.net", "serving.proto",
     "serving.terminal"),
    ("serving.triton", "serving.index", "serving.pipeline.features", "serving.metrics"),
    ("serving.pipeline",),
    ("serving.repository",),
    ("serving.batching", "serving.service", "serving.http_api", "serving.grpc_api", "serving.app",
     "serving.ray_runtime"),
    ("serving.tools", "serving.startup", "serving.cli"),
)


def _sources(*extra: str) -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "ranker_pb2" not in p.name]
    return files + [ROOT / name for name in extra]


def _layer(module: str) -> int:
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
    upward = []
    for path in (ROOT / "serving").rglob("*.py"):
        if "ranker_pb2" in path.name or "_model" in path.parts:
            continue
        me = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("serving.") and _layer(name) > _layer(me):
                    upward.append(f"{me} imports {name}")
    assert upward == []


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


def test_every_module_says_what_it_owns() -> None:
    missing = [str(p.relative_to(ROOT)) for p in (ROOT / "serving").rglob("*.py")
               if "ranker_pb2" not in p.name and p.name != "__init__.py"
               and "Owns:" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert missing == []
