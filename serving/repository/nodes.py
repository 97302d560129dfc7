"""Which serving nodes follow the repository, and which versions their Tritons have loaded.

Owns: the heartbeat files ``<nodes dir>/<key>.json`` (one per replica: its Triton and the
versions ready there, rewritten every second by its heartbeat follower) and waiting on them, and beside
each the replica's metrics snapshot ``<key>.prom`` (its Prometheus exposition), which any
replica merges to answer ``/metrics`` for the whole service. A push writes a
version, then waits until every live node reports it loaded before it moves traffic, so a canary
or a new live version never reaches a node whose Triton lacks it. The files live beside the
versions by default (``Settings.nodes_dir``: ``<repo>/.nodes``, or ``<state_dir>/nodes``, a
writable volume apart from read-only versions), so wherever it is shared (a path here, a
ReadWriteMany volume on a cluster) the nodes are seen. Heartbeats of replicas gone for
``PRUNE_S`` are removed by the next heartbeat written. Must not touch: versions, traffic, Triton.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.errors import PushRefusedError
from serving.files import atomic_write_text

__all__ = ["FRESH_S", "PRUNE_S", "NodeState", "live_metrics", "live_nodes", "prune_heartbeats", "remove_heartbeat", "wait_loaded",
           "write_heartbeat"]

FRESH_S = 10.0  # a node whose heartbeat is older than this is gone (its replica stopped or died)
PRUNE_S = 600.0  # a heartbeat this old is removed: its replica is long gone


@dataclass(frozen=True)
class NodeState:
    """One node's last heartbeat."""

    key: str
    triton: str
    loaded: dict[str, list[int]]
    at: float
    catalogue_version: int = 0

    def has(self, model: str, version: int) -> bool:
        return version in self.loaded.get(model, [])


def write_heartbeat(nodes_dir: Path, key: str, triton: str, loaded: Mapping[str, Sequence[int]],
                    metrics: bytes | None = None, catalogue_version: int = 0) -> None:
    """Record that node ``key`` (its Triton at ``triton``) has ``loaded`` ready and serves catalogue
    change ``catalogue_version``, now, and its metrics snapshot when given."""
    d = Path(nodes_dir)
    d.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        atomic_write_text(d / f"{key}.prom", metrics.decode(), durable=False)
    atomic_write_text(d / f"{key}.json", durable=False, text=json.dumps({"triton": triton, "at": time.time(),
                                                      "loaded": {m: sorted(v) for m, v in loaded.items()},
                                                      "catalogue_version": catalogue_version}))


def remove_heartbeat(nodes_dir: Path, key: str) -> None:
    for suffix in (".json", ".prom"):
        (Path(nodes_dir) / f"{key}{suffix}").unlink(missing_ok=True)


def prune_heartbeats(nodes_dir: Path, *, older_than_s: float = PRUNE_S) -> list[str]:
    """Remove the heartbeats (and metrics snapshots) of replicas silent for ``older_than_s``;
    returns their keys."""
    d = Path(nodes_dir)
    cutoff = time.time() - older_than_s
    gone = []
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            if path.stat().st_mtime < cutoff:
                remove_heartbeat(d, path.stem)
                gone.append(path.stem)
        except FileNotFoundError:
            continue
    return gone


def live_metrics(nodes_dir: Path, *, exclude: str | None = None, fresh_s: float = FRESH_S) -> list[str]:
    """The metrics snapshots of the live nodes (but ``exclude``'s)."""
    out = []
    for node in live_nodes(nodes_dir, fresh_s=fresh_s):
        path = Path(nodes_dir) / f"{node.key}.prom"
        if node.key != exclude and path.is_file():
            try:
                out.append(path.read_text())
            except OSError:
                continue
    return out


def live_nodes(nodes_dir: Path, *, fresh_s: float = FRESH_S) -> list[NodeState]:
    """Nodes whose heartbeat is younger than ``fresh_s``."""
    d = Path(nodes_dir)
    now = time.time()
    out = []
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced, or written by something else
        if now - float(raw.get("at", 0)) <= fresh_s:
            out.append(NodeState(path.stem, str(raw.get("triton", "")),
                                 {m: [int(v) for v in vs] for m, vs in raw.get("loaded", {}).items()}, raw["at"],
                                 int(raw.get("catalogue_version", 0))))
    return out


def wait_loaded(nodes_dir: Path, model: str, version: int, *, timeout_s: float = 60.0, poll_s: float = 0.2) -> list[str]:
    """Wait until every live node reports ``model`` ``version`` ready; returns their keys.

    Raises:
        PushRefusedError: naming the nodes that did not load it within ``timeout_s``.
    """
    t_end = time.monotonic() + timeout_s
    while True:
        nodes = live_nodes(nodes_dir)
        lagging = [n.key for n in nodes if not n.has(model, version)]
        if not lagging:
            return [n.key for n in nodes]
        if time.monotonic() > t_end:
            raise PushRefusedError(f"{model} version {version} was not ready on node(s) {lagging} within "
                                   f"{timeout_s:g} s; traffic did not move")
        time.sleep(poll_s)
