"""Safe where it runs, on the running embedded default: every listener of the tree on loopback,
Triton's model loads and shared memory behind its key, a tampered version never loaded while the
live one keeps serving, and `rankserve verify` naming the file."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from serving.config import Settings
from serving.errors import RankserveError
from serving.repository.nodes import live_nodes
from serving.repository.registry import ModelRegistry
from serving.triton.client import TritonClient
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def listeners(root: psutil.Process) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of ``root`` and its descendants."""
    out = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns, name = proc.net_connections(kind="inet"), proc.name()
        except psutil.NoSuchProcess:
            continue
        out += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_every_listener_of_the_embedded_default_is_on_loopback(rankserve_url: str, settings: Settings,
                                                                triton) -> None:  # noqa: ANN001
    """Ray (token auth on), Serve's gRPC servers (bound to the node's address by rankserve's worker
    hook), HAProxy's stats and exporter, Triton: nothing listens beyond loopback."""
    found = listeners(psutil.Process())
    assert {settings.port, settings.grpc_port} <= {port for _, _, port in found}
    assert any(name.startswith("ray::ServeReplica") for name, _, _ in found)
    assert [x for x in found if not is_loopback(x[1])] == []


def test_triton_loads_models_and_maps_memory_only_with_its_key(triton) -> None:  # noqa: ANN001
    """Another process that reaches Triton's port can infer, not load a model or read its index."""
    plain, keyed = TritonClient(triton.grpc_url), TritonClient(triton.grpc_url, triton.key)
    try:
        assert plain.server_ready() and plain.model_ready("ranker")
        with pytest.raises(RankserveError, match="restricted"):
            plain.ready_versions("ranker")
        with pytest.raises(RankserveError, match="restricted"):
            plain.load_model("ranker")
        assert keyed.ready_versions("ranker")
    finally:
        plain.close()
        keyed.close()


def _served_version(url: str) -> int:
    return int(httpx.post(f"{url}/v1/rank", json={"user_id": 5, "k": 3}, timeout=30).json()["model"]["version"])


def test_a_tampered_version_is_never_loaded_and_verify_names_its_file(rankserve_url: str, settings: Settings,
                                                                       triton) -> None:  # noqa: ANN001
    reg = ModelRegistry(settings.model_repository)
    live = reg.traffic("ranker").live
    bad = settings.model_repository / "ranker" / str(max(reg.versions("ranker")) + 1)
    staged = bad.with_name(f".staged-{bad.name}")
    shutil.copytree(settings.model_repository / "ranker" / str(live), staged,
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(staged / "model.pt", "ab") as f:
        f.write(b"not what was written")
    client = TritonClient(triton.grpc_url, triton.key)
    try:
        staged.rename(bad)
        seen = time.time() + 2.5  # the follower looks every second; a heartbeat after this has looked
        node = wait_for(lambda: next((n for n in live_nodes(settings.nodes_dir) if n.at > seen), None),
                        "a heartbeat written after the replica's follower saw the new version")
        assert int(bad.name) not in node.loaded.get("ranker", []) and live in node.loaded["ranker"]
        verify = subprocess.run([sys.executable, "-m", "serving.cli", "verify"], capture_output=True, text=True,
                                timeout=300, env={**os.environ, "RANKSERVE_MODEL_REPOSITORY":
                                                  str(settings.model_repository)}, check=False)
        assert verify.returncode == 1 and f"ranker/{bad.name}/model.pt" in verify.stdout, verify.stdout
        for _ in range(5):
            assert _served_version(rankserve_url) == live
        assert int(bad.name) not in client.ready_versions("ranker")
    finally:
        client.close()
        shutil.rmtree(bad, ignore_errors=True)
        shutil.rmtree(staged, ignore_errors=True)
