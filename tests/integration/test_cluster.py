"""A real two-node Ray cluster on this machine (separate `ray start` processes, each node its own
Triton): one replica per node, each calling its node-local Triton; a push under load reaches both
Tritons before traffic moves, with no failed request; a node that leaves and rejoins.

Marked `cluster`: these run with `make cluster-test`, not in `make test` (a cluster of two nodes,
each with its Triton, is more than a 2-core machine runs beside the suite). `make test` keeps what
the KubeRay manifest relies on, on the session's one node: a push is loaded into every live node's
Triton before traffic names it (tests/integration/test_push.py).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.cluster import LocalCluster
from serving.config import Settings
from serving.metrics import metric_values
from serving.pipeline.features import FeatureTables
from serving.repository.nodes import live_nodes
from serving.repository.push import push, rollback
from serving.repository.registry import ModelRegistry
from serving.triton.client import TritonClient
from tests.load import Load
from tests.waiting import metric, wait_for, wait_for_answers

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    work = tmp_path_factory.mktemp("cluster")
    repo = work / "model_repository"  # its own copy: pushes here do not reach the session's server
    shutil.copytree(settings.model_repository, repo, ignore=shutil.ignore_patterns(".*"))
    c = LocalCluster(settings.model_copy(update={"model_repository": repo}), work)
    try:
        c.start()
        _wait_for_replicas(c, 2)
        yield c
    finally:
        c.stop()
    assert c.left_running() == [], "a process of the cluster outlived its stop"


def _url(c: LocalCluster, node: int = 0) -> str:
    return f"http://127.0.0.1:{c.nodes[node].http_port}"


def _wait_for_replicas(c: LocalCluster, n: int, timeout_s: float = 180) -> None:
    def up() -> bool:
        return len(live_nodes(c.settings.nodes_dir)) >= n and \
            httpx.get(f"{_url(c)}/readyz", timeout=5).status_code == 200

    wait_for(up, lambda: f"{n} replicas up: {live_nodes(c.settings.nodes_dir)}", timeout_s=timeout_s,
             poll_s=1, ignoring=(httpx.HTTPError,))


def _inferences(triton_metrics_url: str) -> float:
    text = httpx.get(triton_metrics_url, timeout=10).text
    return sum(v for k, v in metric_values(text).items() if k.startswith("nv_inference_request_success"))


def _load(url: str, tmp: Path, n_users: int) -> Load:
    rng = np.random.default_rng(3)
    return Load(url, [{"user_id": int(u), "k": 10, "timeout_ms": 10000} for u in rng.integers(0, n_users, 300)],
                tmp / "load")


def _canary_share(url: str, version: int) -> float:
    return metric(url, "rankserve_model_traffic_percent", model="ranker", version=str(version), role="canary")


def test_each_node_serves_through_its_own_triton_and_a_push_reaches_both(cluster: LocalCluster,
                                                                        tmp_path: Path) -> None:
    c = cluster
    nodes = live_nodes(c.settings.nodes_dir)
    assert sorted(n.triton for n in nodes) == sorted(n.triton.grpc_url for n in c.nodes), nodes
    before = [_inferences(n.triton.metrics_url) for n in c.nodes]
    for i in range(60):  # through both nodes' HAProxy
        r = httpx.post(f"{_url(c, i % 2)}/v1/rank", json={"user_id": i, "k": 5}, timeout=30)
        assert r.status_code == 200, r.text
    grown = [_inferences(n.triton.metrics_url) - b for n, b in zip(c.nodes, before, strict=True)]
    assert all(g > 0 for g in grown), f"each node's Triton must serve its replica: {grown}"

    registry = ModelRegistry(c.settings.model_repository)
    tables = FeatureTables.load(c.settings.marketplace_path)
    old = registry.traffic("ranker").live
    art = tmp_path / "art"
    art.mkdir()
    src = registry.version_dir("ranker", old)
    for name in ("model.pt", "golden.npz", "meta.json"):
        shutil.copy(src / name, art / name)
    with _load(_url(c), tmp_path, tables.n_users) as load:
        wait_for_answers(_url(c), 30)
        # a generous bound for both nodes to load the version: on 2 cores, beside the load, one took 60 s
        res = push(registry, "ranker", art, tables, TritonClient(c.nodes[0].triton.grpc_url, c.nodes[0].triton.key), canary_percent=50,
                   nodes_timeout_s=180)
        assert sorted(res.checks["nodes"]) == sorted(n.key for n in nodes)
        for node in c.nodes:  # the canary was ready on every node before traffic named it
            assert TritonClient(node.triton.grpc_url).model_ready("ranker", str(res.version))
        wait_for(lambda: _canary_share(_url(c), res.version) > 0, f"a replica routes half the users to v{res.version}")
        wait_for_answers(_url(c), 40)
        rollback(registry, "ranker")
        wait_for(lambda: _canary_share(_url(c), res.version) == 0, f"no replica routes to v{res.version}")
        wait_for_answers(_url(c), 30)
        summary, rows = load.finish()
    versions = {r["response"]["model"]["version"] for r in rows if r["status"] == 200}
    print(f"two-node push under load: {summary['requests']} requests, {summary['failures']} failed, "
          f"versions {versions}")
    assert summary["failures"] == 0 and summary["requests"] > 50, summary
    assert {old, res.version} <= versions


def _counts_both_replicas(url: str) -> bool:
    return metric(url, "rankserve_replicas") == 2.0


def test_metrics_sum_every_replica(cluster: LocalCluster) -> None:
    """One scrape of /metrics, on either node, answers for both replicas."""
    for node in (0, 1):  # each replica publishes a snapshot a second
        wait_for(partial(_counts_both_replicas, _url(cluster, node)), f"node {node}'s /metrics counts both replicas")


def test_a_node_that_leaves_and_rejoins(cluster: LocalCluster, tmp_path: Path) -> None:
    """Node 1 goes away under load: the service keeps answering through node 0 (failures counted
    and bounded); when node 1 rejoins, its replica serves again through its own Triton."""
    c = cluster
    tables = FeatureTables.load(c.settings.marketplace_path)
    with _load(_url(c), tmp_path, tables.n_users) as load:
        wait_for_answers(_url(c), 30)
        t_stop = time.time()
        c.stop_node(c.nodes[1])
        # gone: its heartbeat goes stale, and the service answers through node 0 meanwhile
        wait_for(lambda: len(live_nodes(c.settings.nodes_dir)) == 1, "node 1's heartbeat goes stale")
        wait_for_answers(_url(c), 30)
        c.start_node(c.nodes[1])
        _wait_for_replicas(c, 2, timeout_s=240)
        before = _inferences(c.nodes[1].triton.metrics_url)
        wait_for(lambda: _inferences(c.nodes[1].triton.metrics_url) > before, "the rejoined node's Triton serves")
        wait_for_answers(_url(c), 30)
        summary, rows = load.finish()
    failed_after = [r for r in rows if r["status"] != 200 and r["t"] > t_stop + 20]
    print(f"node loss: {summary['requests']} requests, {summary['failures']} failed, status {summary['status']}")
    assert summary["requests"] > 100
    assert summary["failures"] <= 0.2 * summary["requests"], summary
    assert failed_after == []
    assert _inferences(c.nodes[1].triton.metrics_url) > before, "the rejoined node's Triton serves again"
