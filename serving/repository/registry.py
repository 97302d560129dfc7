"""What the model repository holds and which version serves whom.

The repository is Triton's (``model_repository/<model>/<version>/``). Each version directory
carries ``meta.json`` (written at export: crossing spec, quality figures, when it was made). The
traffic split lives beside the versions in ``model_repository/<model>/traffic.json``::

    {"live": 3, "canary": {"version": 4, "percent": 10}, "shadow": {"version": 5, "percent": 5}}

Without that file the highest version is live. Canary routing hashes ``user_id`` so a user sees
one version consistently.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernels import CrossSpec, cross_hash_scalar
from serving.errors import ModelNotFoundError

__all__ = ["ModelRegistry", "Traffic", "user_bucket", "version_dirs"]


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numbered version directories of one model (temp dirs starting with '.' are ignored)."""
    if not model_dir.is_dir():
        return {}
    return {int(p.name): p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}


def user_bucket(user_id: int) -> float:
    """Stable position of a user in [0, 100): same user, same bucket, on every replica."""
    return cross_hash_scalar(user_id, 0x5EED, 7, 10_000) / 100.0


@dataclass(frozen=True)
class Traffic:
    live: int
    canary_version: int | None = None
    canary_percent: float = 0.0
    shadow_version: int | None = None
    shadow_percent: float = 0.0
    history: tuple[int, ...] = ()  # earlier live versions, oldest first (rollback targets)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"live": self.live, "history": list(self.history)}
        if self.canary_version is not None:
            out["canary"] = {"version": self.canary_version, "percent": self.canary_percent}
        if self.shadow_version is not None:
            out["shadow"] = {"version": self.shadow_version, "percent": self.shadow_percent}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Traffic:
        can = d.get("canary") or {}
        sh = d.get("shadow") or {}
        return cls(
            live=int(d["live"]),
            canary_version=int(can["version"]) if can else None,
            canary_percent=float(can.get("percent", 0.0)),
            shadow_version=int(sh["version"]) if sh else None,
            shadow_percent=float(sh.get("percent", 0.0)),
            history=tuple(int(v) for v in d.get("history", ())),
        )


@dataclass
class ModelRegistry:
    """Reads versions, metadata and traffic of the models in a Triton model repository."""

    repo: Path
    _meta_cache: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict, repr=False)

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

    def traffic(self, model: str) -> Traffic:
        versions = self.versions(model)
        if not versions:
            raise ModelNotFoundError(f"unknown model {model!r}; served: {self.models()}", field="model")
        path = self.repo / model / "traffic.json"
        if path.is_file():
            t = Traffic.from_json(json.loads(path.read_text()))
            if t.live in versions:
                return t
        return Traffic(live=versions[-1])

    def set_traffic(self, model: str, traffic: Traffic) -> None:
        """Atomically replace the traffic split of ``model``."""
        target = self.repo / model / "traffic.json"
        fd, tmp = tempfile.mkstemp(prefix=".traffic-", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(traffic.to_json(), f)
        os.replace(tmp, target)

    def route(self, traffic: Traffic, user_id: int) -> int:
        """Version that scores ``user_id`` under ``traffic`` (canary by stable user hash)."""
        if traffic.canary_version is not None and user_bucket(user_id) < traffic.canary_percent:
            return traffic.canary_version
        return traffic.live
