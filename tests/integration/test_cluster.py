"""A real two-node Ray cluster on this machine (separate `ray start` processes, each node its own
Triton): one replica per node, each calling its node-local Triton; a push under load reaches both
Tritons before traffic moves, with no failed request; a node that leaves and rejoins.

The first test runs in `make test`; the heavier node-loss case is marked `cluster` and runs with
`make cluster-test`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
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

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if len(live_nodes(c.settings.nodes_dir)) >= n:
            try:
                if httpx.get(f"{_url(c)}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(1)
    raise AssertionError(f"{n} replicas did not come up: {live_nodes(c.settings.nodes_dir)}")


def _inferences(triton_metrics_url: str) -> float:
    text = httpx.get(triton_metrics_url, timeout=10).text
    return sum(v for k, v in metric_values(text).items() if k.startswith("nv_inference_request_success"))


def _load(url: str, tmp: Path, n_users: int, duration_s: float = 90) -> tuple[subprocess.Popen[str], Path]:
    bodies = tmp / "bodies.jsonl"
    rng = np.random.default_rng(3)
    bodies.write_text("\n".join(json.dumps({"user_id": int(u), "k": 10, "timeout_ms": 10000})
                                for u in rng.integers(0, n_users, 300)))
    record = tmp / "record.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "loadtest.loadgen", "--url", f"{url}/v1/rank", "--bodies",
                             str(bodies), "--concurrency", "4", "--duration-s", str(duration_s), "--warmup-s", "0",
                             "--record", str(record), "--stop-file", str(tmp / "stop")],
                            stdout=subprocess.PIPE, text=True)
    return proc, record


def _finish(proc: subprocess.Popen[str], record: Path, tmp: Path) -> tuple[dict, list[dict]]:
    (tmp / "stop").touch()
    out, _ = proc.communicate(timeout=180)
    return json.loads(out.strip().splitlines()[-1]), [json.loads(ln) for ln in record.read_text().splitlines() if ln]


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
    proc, record = _load(_url(c), tmp_path, tables.n_users)
    time.sleep(3)
    res = push(registry, "ranker", art, tables, TritonClient(c.nodes[0].triton.grpc_url), canary_percent=50)
    assert sorted(res.checks["nodes"]) == sorted(n.key for n in nodes)
    for node in c.nodes:  # the canary was ready on every node before traffic named it
        assert TritonClient(node.triton.grpc_url).model_ready("ranker", str(res.version))
    time.sleep(4)
    rollback(registry, "ranker")
    time.sleep(3)
    summary, rows = _finish(proc, record, tmp_path)
    versions = {r["response"]["model"]["version"] for r in rows if r["status"] == 200}
    print(f"two-node push under load: {summary['requests']} requests, {summary['failures']} failed, "
          f"versions {versions}")
    assert summary["failures"] == 0 and summary["requests"] > 50, summary
    assert {old, res.version} <= versions


def _metrics_sum(url: str, name: str) -> float:
    return metric_values(httpx.get(f"{url}/metrics", timeout=10).text, (name,)).get(name, 0.0)


def test_metrics_sum_every_replica(cluster: LocalCluster) -> None:
    """One scrape of /metrics, on either node, answers for both replicas."""
    c = cluster
    time.sleep(2)  # a snapshot per replica per second
    for node in (0, 1):
        assert _metrics_sum(_url(c, node), "rankserve_replicas") == 2.0


@pytest.mark.cluster
def test_a_node_that_leaves_and_rejoins(cluster: LocalCluster, tmp_path: Path) -> None:
    """Node 1 goes away under load: the service keeps answering through node 0 (failures counted
    and bounded); when node 1 rejoins, its replica serves again through its own Triton."""
    c = cluster
    tables = FeatureTables.load(c.settings.marketplace_path)
    proc, record = _load(_url(c), tmp_path, tables.n_users, duration_s=120)
    time.sleep(3)
    t_stop = time.time()
    c.stop_node(c.nodes[1])
    time.sleep(15)
    c.start_node(c.nodes[1])
    _wait_for_replicas(c, 2, timeout_s=240)
    before = _inferences(c.nodes[1].triton.metrics_url)
    time.sleep(5)
    summary, rows = _finish(proc, record, tmp_path)
    failed_after = [r for r in rows if r["status"] != 200 and r["t"] > t_stop + 20]
    print(f"node loss: {summary['requests']} requests, {summary['failures']} failed, status {summary['status']}")
    assert summary["requests"] > 100
    assert summary["failures"] <= 0.2 * summary["requests"], summary
    assert failed_after == []
    assert _inferences(c.nodes[1].triton.metrics_url) > before, "the rejoined node's Triton serves again"
