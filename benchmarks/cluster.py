"""A real multi-node Ray cluster on this machine: separate ``ray start`` processes on loopback,
each node with its own Triton, its own HAProxy ingress port and its own Ray resource.

Owns: starting and stopping such a cluster (nodes, their Tritons, the rankserve deployment with
one replica per node), and finding and stopping one node's processes. Used by the cluster tests
(``make cluster-test``) to show what the KubeRay manifest relies on: replicas calling their
node-local Triton, pushes reaching every node, a node leaving and rejoining. Must not touch: the
serving code (it deploys what ships).

Each node's ``ray start`` runs with its own environment, which its Ray workers inherit: that is
how a replica learns its node-local Triton (``RANKSERVE_TRITON_URL``), as a KubeRay worker pod
does from its container env. Ray refuses a second node on one machine unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``, and then gcs_server and the raylets listen on every
interface: keep such a cluster short-lived (docs/operations/scale-out.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.config import Settings
from serving.net import QUIET_PORTS, free_port
from serving.ray_runtime import Ingress, ensure_ray_token
from serving.repository.loading import startup_loader
from serving.repository.registry import ModelRegistry
from serving.triton.process import TritonProcess

__all__ = ["ClusterNode", "LocalCluster", "raylet_resources"]

_DEPLOY = """
import json, sys
from ray import serve
import ray
from serving.app import build_app
from serving.triton.client import TritonEndpoint
from serving.config import Settings
from serving.ray_runtime import Ingress, start_serve
spec = json.loads(sys.argv[1])
settings = Settings.model_validate(spec["settings"])
from serving.ray_hardening import SETUP_HOOK
ray.init(address=spec["address"], runtime_env={"worker_process_setup_hook": SETUP_HOOK}, logging_level="WARNING")
start_serve(Ingress(**{**spec["ingress"], "runtime_dir": settings.data_dir / "ingress"}))
serve.run(build_app(settings, TritonEndpoint(spec["triton_url"])), name="rankserve", route_prefix="/")
"""


def raylet_resources(cmdline: list[str]) -> set[str]:
    """The names of the resources a raylet's command line gives its node: Ray passes them as
    ``--static_resource_list=name,amount,name,amount,...`` (``ray start --resources`` JSON is not
    on the raylet's command line)."""
    for arg in cmdline:
        if arg.startswith("--static_resource_list="):
            return set(arg.partition("=")[2].split(",")[0::2])
    return set()


@dataclass
class ClusterNode:
    """One Ray node: its resource name, Triton, HAProxy port and ``ray start`` environment."""

    index: int
    triton: TritonProcess
    http_port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def resource(self) -> str:
        return f"node{self.index}"


class LocalCluster:
    """``n_nodes`` Ray nodes on loopback, each with its own Triton on ``settings.model_repository``.

    Args:
        settings: the rankserve settings to deploy with (``num_replicas`` becomes ``n_nodes``,
            one replica per node).
        work_dir: Triton runtime dirs, logs and Ray's temp dir.
    """

    def __init__(self, settings: Settings, work_dir: Path, n_nodes: int = 2) -> None:
        self.work_dir = Path(work_dir)
        self.gcs_port = free_port(QUIET_PORTS)
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.temp_dir = self.work_dir / "ray"
        self.settings = settings.model_copy(update={"num_replicas": n_nodes, "max_replicas_per_node": 1,
                                                    "port": free_port(QUIET_PORTS), "grpc_port": 0})
        self.nodes = [self._node(i) for i in range(n_nodes)]

    def _node(self, i: int) -> ClusterNode:
        triton = TritonProcess(self.settings.model_repository, runtime_dir=self.work_dir / f"triton{i}",
                               kind="cpu", ready_timeout_s=120,
                               load=startup_loader(ModelRegistry.of(self.settings), self.settings.triton_keep_versions))
        port = self.settings.port if i == 0 else free_port(QUIET_PORTS)
        ingress = Ingress.from_settings(self.settings)
        env = {**os.environ, **ingress.environment(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
               "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
               "RAY_AUTH_TOKEN_PATH": str(ensure_ray_token(self.work_dir / "ray-auth-token")),
               # a worker node's HAProxy takes its own port (the head's takes settings.port)
               "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(port)}
        env.update(_node_triton_env(triton))
        return ClusterNode(i, triton, port, env)

    def start(self) -> LocalCluster:
        """Tritons, then the head and the other nodes, then the deployment (one replica per node)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            node.triton.start()
        for node in self.nodes:
            self.start_node(node)
        self.deploy()
        return self

    def start_node(self, node: ClusterNode) -> None:
        """``ray start`` for ``node`` (the head for node 0), with that node's environment."""
        ports = {"--dashboard-agent-listen-port": free_port(QUIET_PORTS),
                 "--metrics-export-port": free_port(QUIET_PORTS),
                 "--runtime-env-agent-port": free_port(QUIET_PORTS),
                 "--min-worker-port": 10002 + 4000 * node.index, "--max-worker-port": 13999 + 4000 * node.index}
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--node-ip-address=127.0.0.1", "--num-cpus=1",
               f"--resources={json.dumps({node.resource: 1})}", "--disable-usage-stats",
               *(f"{k}={v}" for k, v in ports.items())]
        if node.index == 0:
            cmd += ["--head", f"--port={self.gcs_port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}",
                    f"--ray-client-server-port={free_port(QUIET_PORTS)}"]
        else:
            cmd += [f"--address={self.address}"]
        out = subprocess.run(cmd, env=node.env, capture_output=True, text=True, timeout=180, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"ray start for {node.resource} failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")

    def deploy(self) -> None:
        """Serve's ingress and the rankserve application, from a driver process of its own."""
        ingress = Ingress.from_settings(self.settings)
        spec = {"address": self.address, "settings": self.settings.model_dump(mode="json"),
                "triton_url": self.nodes[0].triton.grpc_url,
                "ingress": {"mode": ingress.mode, "host": ingress.host, "port": ingress.port,
                            "grpc_port": ingress.grpc_port, "drain_s": ingress.drain_s,
                            "max_message_bytes": ingress.max_message_bytes}}
        out = subprocess.run([sys.executable, "-c", _DEPLOY, json.dumps(spec)], env=self.nodes[0].env,
                             capture_output=True, text=True, timeout=300, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"deploying rankserve on the cluster failed: {out.stderr[-3000:]}")

    def node_pids(self, node: ClusterNode) -> list[int]:
        """The processes of one node: its raylet and the workers it started."""
        import psutil

        raylets = [p for p in psutil.process_iter(["name", "cmdline"])
                   if p.info["name"] == "raylet" and str(self.temp_dir) in " ".join(p.info["cmdline"] or [])
                   and node.resource in raylet_resources(p.info["cmdline"] or [])]
        pids = []
        for raylet in raylets:
            pids.append(raylet.pid)
            pids += [c.pid for c in raylet.children(recursive=True)]
        return pids

    def stop_node(self, node: ClusterNode) -> None:
        """Take ``node`` out of the cluster, as a node that goes away: its raylet and workers stop."""
        for pid in self.node_pids(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def left_running(self) -> list[int]:
        """The processes of this cluster still alive (not other Ray clusters on the machine): Ray's
        (their command lines name its temp dir) and each node's HAProxy (its command line names
        only this cluster's ingress folder; a killed HAProxy manager leaves it behind)."""
        import psutil

        marks = (str(self.temp_dir), str(Ingress.from_settings(self.settings).haproxy_dir))
        return [p.pid for p in psutil.process_iter(["cmdline"])
                if p.pid != os.getpid() and any(m in " ".join(p.info["cmdline"] or []) for m in marks)]

    def stop(self) -> None:
        """Every process of this cluster, then the Tritons."""
        for _ in range(3):
            mine = self.left_running()
            if not mine:
                break
            for pid in mine:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        for node in self.nodes:
            node.triton.stop()


def _node_triton_env(triton: TritonProcess) -> dict[str, str]:
    """The node-local Triton and its key, as a KubeRay worker pod's env names them."""
    return {"RANKSERVE_TRITON_URL": triton.grpc_url, "RANKSERVE_TRITON_KEY": triton.key}
