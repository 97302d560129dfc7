"""Scenario files beside the model repository: typed, validated, versioned, applied atomically.

Owns: ``<repository>/scenarios/<name>/<version>.yaml`` (every file applied, kept verbatim, version
1, 2, ... per scenario, never reused) and ``<repository>/scenarios/live.json`` (the live version
of every scenario with its earlier ones, replaced in one rename, so a replica reads the old set or
the new one, never half of a change); parsing a file (YAML, a key given twice refused), validating
it against one server (:meth:`serving.pipeline.scenario.Scenario.resolve`: the global limits, the
repository's ranking models, the catalogue), ``apply`` and ``rollback`` under one lock (applies at
the same moment each get their own version; none is lost), and the live set a replica serves.
A refused file changes nothing. Replicas follow ``live.json`` within a fraction of a second
(``serving.repository.followers``). Must not touch: Triton, requests, the pipeline's stages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from serving.config import Settings
from serving.errors import RankserveError, ScenarioRefusedError
from serving.files import atomic_write_text, read_state, write_state
from serving.pipeline.crossing import FEATURES_YAML
from serving.pipeline.orchestration import RankPipeline
from serving.pipeline.scenario import NAME_PATTERN, Scenario, ScenarioSpec
from serving.repository.registry import ModelRegistry

__all__ = ["ScenarioStore", "parse_scenario", "ranking_models", "use_live_scenarios"]

_DIR = "scenarios"
_LIVE = "live.json"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_scenario(text: str) -> ScenarioSpec:
    """The spec of a scenario file's text.

    Raises:
        ScenarioRefusedError: the YAML does not parse (with the line), or the spec is invalid.
    """
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ScenarioRefusedError(f"the YAML does not parse{where}: {problem}") from err
    return ScenarioSpec.from_mapping(data)


def ranking_models(registry: ModelRegistry, settings: Settings) -> list[str]:
    """The repository's models a scenario may rank with: every model with a live version that
    records its crossing spec (the user tower is not one)."""
    out = []
    for name in registry.models():
        if name == settings.user_tower_model:
            continue
        try:
            live = registry.traffic(name).live
            ranks = "cross_spec" in registry.meta(name, live) or (registry.version_dir(name, live) / FEATURES_YAML).is_file()
        except (RankserveError, OSError, ValueError):
            continue
        if ranks:
            out.append(name)
    return out


@dataclass(frozen=True)
class _Pointer:
    live: int
    history: tuple[int, ...] = ()


class ScenarioStore:
    """The scenario files of one model repository."""

    def __init__(self, repo: Path) -> None:
        self.dir = Path(repo) / _DIR
        self.live_path = self.dir / _LIVE

    # -- reading ---------------------------------------------------------------------------
    def stamp(self) -> tuple[int, int] | None:
        """Changes whenever ``live.json`` is replaced (a stat: what a replica polls)."""
        try:
            st = os.stat(self.live_path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _pointers(self) -> dict[str, _Pointer]:
        raw = read_state(self.live_path, json.loads) or {}
        return {n: _Pointer(int(p["live"]), tuple(int(v) for v in p.get("history", ())))
                for n, p in raw.get("scenarios", {}).items()}

    def names(self) -> list[str]:
        return sorted(self._pointers())

    def versions(self, name: str) -> list[int]:
        d = self.dir / name
        if not re.match(NAME_PATTERN, name) or not d.is_dir():
            return []
        return sorted(int(p.stem) for p in d.glob("*.yaml") if p.stem.isdigit())

    def text(self, name: str, version: int) -> str:
        return (self.dir / name / f"{version:06d}.yaml").read_text()

    def listing(self) -> list[dict[str, Any]]:
        """Every scenario's live version, the versions on disk and the rollback targets."""
        return [{"name": n, "live": p.live, "versions": self.versions(n), "history": list(p.history)}
                for n, p in sorted(self._pointers().items())]

    def live(self, settings: Settings, registry: ModelRegistry,
             groups: Mapping[str, int]) -> tuple[dict[str, Scenario], dict[str, str]]:
        """The live version of every scenario, validated against this server; and, for those
        refused here, the reason (a replica keeps serving what it had)."""
        served: dict[str, Scenario] = {}
        refused: dict[str, str] = {}
        rankers = ranking_models(registry, settings)
        for name, p in self._pointers().items():
            try:
                served[name] = self._resolve(name, p.live, settings, rankers, groups)
            except (ScenarioRefusedError, OSError) as err:
                refused[name] = getattr(err, "message", str(err))
        return served, refused

    def resolve(self, name: str, version: int, settings: Settings, registry: ModelRegistry,
                groups: Mapping[str, int]) -> Scenario:
        """Version ``version`` of ``name`` as this server would serve it (live or not).

        Raises:
            ScenarioRefusedError: no such version, or it is not valid here.
        """
        if version not in self.versions(name):
            raise ScenarioRefusedError(f"scenario {name!r} has no version {version}", field="scenario")
        return self._resolve(name, version, settings, ranking_models(registry, settings), groups)

    def _resolve(self, name: str, version: int, settings: Settings, rankers: list[str],
                 groups: Mapping[str, int]) -> Scenario:
        spec = parse_scenario(self.text(name, version))
        if spec.name != name:
            raise ScenarioRefusedError(f"{name} v{version}: the file names scenario {spec.name!r}")
        return Scenario.resolve(spec, version, settings, rankers, groups)

    # -- changing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[dict[str, _Pointer]]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)  # applies queue up: none is lost, none is numbered twice
            yield self._pointers()

    def _write_pointers(self, pointers: dict[str, _Pointer]) -> None:
        revision = int((read_state(self.live_path, json.loads) or {}).get("revision", 0))
        body = {"revision": revision + 1,
                "scenarios": {n: {"live": p.live, "history": list(p.history)} for n, p in sorted(pointers.items())}}
        write_state(self.live_path, json.dumps(body, indent=1) + "\n")

    def check(self, text: str, settings: Settings, registry: ModelRegistry, groups: Mapping[str, int]) -> Scenario:
        """Validate a scenario file's text as :meth:`apply` would; nothing is written.

        Raises:
            ScenarioRefusedError: with the reason.
        """
        return Scenario.resolve(parse_scenario(text), 0, settings, ranking_models(registry, settings), groups)

    def apply(self, text: str, settings: Settings, registry: ModelRegistry, groups: Mapping[str, int]) -> Scenario:
        """Validate ``text`` and make it the next version of its scenario, live at once.

        Raises:
            ScenarioRefusedError: the file was refused; nothing was written.
        """
        checked = self.check(text, settings, registry, groups)
        name = checked.name
        with self._lock() as pointers:
            version = max(self.versions(name), default=0) + 1
            (self.dir / name).mkdir(exist_ok=True)
            atomic_write_text(self.dir / name / f"{version:06d}.yaml", text)
            old = pointers.get(name)
            pointers[name] = _Pointer(version, (*old.history, old.live) if old else ())
            self._write_pointers(pointers)
        return dataclasses.replace(checked, version=version)

    def rollback(self, name: str, settings: Settings, registry: ModelRegistry,
                 groups: Mapping[str, int]) -> Scenario:
        """Make the previous live version of ``name`` live again (checked as an apply is).

        Raises:
            ScenarioRefusedError: unknown scenario, no earlier version, or the earlier version is
                no longer valid here (its ranker gone, a global limit lowered); nothing changed.
        """
        with self._lock() as pointers:
            p = pointers.get(name)
            if p is None:
                raise ScenarioRefusedError(f"unknown scenario {name!r}; scenarios: {sorted(pointers)}",
                                           field="scenario")
            if not p.history:
                raise ScenarioRefusedError(f"scenario {name!r} has no earlier version than v{p.live}")
            back = p.history[-1]
            try:
                restored = self._resolve(name, back, settings, ranking_models(registry, settings), groups)
            except ScenarioRefusedError as err:
                raise ScenarioRefusedError(f"{name} v{back} cannot go live again: {err.message}") from err
            pointers[name] = _Pointer(back, p.history[:-1])
            self._write_pointers(pointers)
        return restored

    def remove_all(self) -> None:
        """Forget every scenario (a fresh build starts its own): the pointers first, then the files."""
        import shutil

        with self._lock():
            self.live_path.unlink(missing_ok=True)
            for d in self.dir.iterdir():
                if d.is_dir():
                    shutil.rmtree(d)


def use_live_scenarios(pipeline: RankPipeline, registry: ModelRegistry) -> dict[str, str]:
    """Serve the repository's live scenarios in ``pipeline``, once (an in-process pipeline: the
    benchmark's floor, the quality figures, tests; replicas follow them with their followers).
    Returns the scenarios refused here, with the reason."""
    served, refused = ScenarioStore(registry.repo).live(pipeline.settings, registry, pipeline.catalogue.group_counts())
    pipeline.set_scenarios(served)
    return refused

