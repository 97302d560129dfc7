"""Which model version scores whom: the traffic split and the stable user bucket.

Owns: the :class:`Traffic` value (its JSON is the repository's ``traffic.json``), the split of
every ranking model as one read-only mapping (:func:`read_split`) and the routing rule (canary by
a stable hash of ``user_id``). Must not touch: files (``serving.repository``
reads and writes them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from kernels import cross_hash_scalar

__all__ = ["Traffic", "TrafficFiles", "read_split", "route", "route_role", "user_bucket"]


def user_bucket(user_id: int | str) -> float:
    """Stable position of a user in [0, 100): same user, same bucket, on every replica (a string id
    by its first 8 bytes of BLAKE2b)."""
    if isinstance(user_id, str):
        user_id = int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "little", signed=True)
    return cross_hash_scalar(user_id, 0x5EED, 7, 10_000) / 100.0


@dataclass(frozen=True)
class Traffic:
    """The traffic split of one model: live version, optional canary and shadow, rollback history."""

    live: int
    canary_version: int | None = None
    canary_percent: float = 0.0
    shadow_version: int | None = None
    shadow_percent: float = 0.0
    history: tuple[int, ...] = ()  # earlier live versions, oldest first (rollback targets)
    # versions loaded before traffic moves to them (a rollback to a version Triton had unloaded)
    preparing: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"live": self.live, "history": list(self.history)}
        if self.canary_version is not None:
            out["canary"] = {"version": self.canary_version, "percent": self.canary_percent}
        if self.shadow_version is not None:
            out["shadow"] = {"version": self.shadow_version, "percent": self.shadow_percent}
        if self.preparing:
            out["preparing"] = list(self.preparing)
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
            preparing=tuple(int(v) for v in d.get("preparing", ())),
        )

    def versions(self) -> tuple[int, ...]:
        """Every version this split sends requests to (live, canary, shadow)."""
        return tuple(v for v in (self.live, self.canary_version, self.shadow_version) if v is not None)

    def loaded_versions(self) -> tuple[int, ...]:
        """Every version Triton must hold for this split: those it sends requests to, and those
        being prepared."""
        return tuple(dict.fromkeys((*self.versions(), *self.preparing)))


def route(traffic: Traffic, user_id: int | str) -> int:
    """Version that scores ``user_id`` under ``traffic`` (canary by stable user hash)."""
    return route_role(traffic, user_id)[0]


def route_role(traffic: Traffic, user_id: int | str) -> tuple[int, str]:
    """Version that scores ``user_id`` under ``traffic``, and its role there: ``live`` or ``canary``."""
    if traffic.canary_version is not None and user_bucket(user_id) < traffic.canary_percent:
        return traffic.canary_version, "canary"
    return traffic.live, "live"


class TrafficFiles(Protocol):
    """Where traffic splits are read (``serving.repository.registry.ModelRegistry``)."""

    def models(self) -> list[str]: ...
    def traffic(self, model: str) -> Traffic: ...


def read_split(files: TrafficFiles, user_tower: str) -> Mapping[str, Traffic]:
    """The traffic split of every ranking model (every model but the user tower), read-only."""
    return MappingProxyType({m: files.traffic(m) for m in files.models() if m != user_tower})
