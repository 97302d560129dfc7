"""What the model repository holds and which version serves whom.

Owns: reading the repository (models, versions, ``meta.json``, crossing specs) and reading and
atomically replacing each model's ``traffic.json``. Must not touch: Triton, the serving process.

The repository is Triton's (``model_repository/<model>/<version>/``). Each version directory
carries ``meta.json`` (written at export: crossing spec, quality figures, when it was made). The
traffic split lives beside the versions in ``model_repository/<model>/traffic.json``::

    {"live": 3, "canary": {"version": 4, "percent": 10}, "shadow": {"version": 5, "percent": 5}}

Without that file the highest version is live. Canary routing hashes ``user_id`` so a user sees
one version consistently (``serving.pipeline.routing``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernels import CrossSpec
from serving.config import Settings
from serving.errors import ModelNotFoundError
from serving.files import read_state, version_dirs, write_state
from serving.pipeline.routing import Traffic

__all__ = ["ModelRegistry", "Traffic"]


@dataclass
class ModelRegistry:
    """Reads versions, metadata and traffic of the models in a Triton model repository."""

    repo: Path
    nodes_dir: Path | None = None  # the replicas' heartbeats (None: <repo>/.nodes)
    _meta_cache: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, settings: Settings) -> ModelRegistry:
        """The repository of ``settings``, with its replicas' heartbeats where the settings keep them."""
        return cls(settings.model_repository, settings.nodes_dir)

    @property
    def heartbeats(self) -> Path:
        """Where the replicas following this repository write their heartbeats."""
        return self.nodes_dir or self.repo / ".nodes"

    def models(self) -> list[str]:
        if not self.repo.is_dir():
            return []
        return sorted(p.name for p in self.repo.iterdir() if (p / "config.pbtxt").is_file())

    def versions(self, model: str) -> list[int]:
        return sorted(version_dirs(self.repo / model))

    def version_dir(self, model: str, version: int) -> Path:
        path = self.repo / model / str(version)
        if not path.is_dir():
            raise ModelNotFoundError(f"model {model!r} has no version {version}", field="model")
        return path

    def meta(self, model: str, version: int) -> dict[str, Any]:
        key = (model, version)
        if key not in self._meta_cache:
            path = self.version_dir(model, version) / "meta.json"
            self._meta_cache[key] = json.loads(path.read_text()) if path.is_file() else {}
        return self._meta_cache[key]

    def cross_spec(self, model: str, version: int) -> CrossSpec:
        spec = self.meta(model, version).get("cross_spec")
        if spec is None:
            raise ModelNotFoundError(f"{model} version {version} records no crossing spec", field="model")
        return CrossSpec.from_json(json.dumps(spec))

    def traffic_path(self, model: str) -> Path:
        return self.repo / model / "traffic.json"

    def traffic(self, model: str) -> Traffic:
        versions = self.versions(model)
        if not versions:
            raise ModelNotFoundError(f"unknown model {model!r}; served: {self.models()}", field="model")
        t = read_state(self.traffic_path(model), lambda text: Traffic.from_json(json.loads(text)))
        if t is not None and t.live in versions:
            return t
        return Traffic(live=versions[-1])

    def set_traffic(self, model: str, traffic: Traffic) -> None:
        """Durably and atomically replace the traffic split of ``model`` (``serving.files.write_state``)."""
        write_state(self.traffic_path(model), json.dumps(traffic.to_json()))

