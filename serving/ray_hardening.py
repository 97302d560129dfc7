"""What rankserve changes in the Ray processes it runs: listeners on the node's own address, and HAProxy's limits.

Owns: :func:`harden_worker`, the ``worker_process_setup_hook`` of rankserve's Ray job (every Ray
worker process of the job runs it before its actor starts: the Serve controller, the proxies,
the HAProxy manager, the replicas), and the ingress limits file it reads. Must not touch:
ranking, requests, the Ray calls of start-up (``serving.ray_runtime``).

Ray Serve 2.60 binds some listeners to every interface with no option to say otherwise: each
replica's inter-deployment gRPC server and its own gRPC server, the fallback gRPC proxy, and
HAProxy's stats page and Prometheus exporter; and it means its gRPC servers not to share a port
with another process, but says so in a way gRPC ignores. Here:

* gRPC servers never share a port with another process (two clusters on one host stay apart);
* gRPC servers bind the node's own address instead of ``[::]`` (``127.0.0.1`` for the embedded
  default, the pod's address on a cluster, where other nodes must reach them and Ray's token and
  rankserve's API keys guard them);
* HAProxy's stats and exporter listen on loopback, its admin socket is the owner's only
  (``mode 600``, not 666);
* HAProxy sheds load at the door: each replica takes at most ``max_conn_per_replica`` requests
  at once and ``max_queue_per_replica`` more wait in HAProxy (at most ``queue_timeout_ms``);
  beyond that HAProxy answers 503 itself, before any Python runs; it reads a whole request
  (``option http-buffer-request``) within ``read_timeout_s`` before a replica sees it, so a
  client that trickles its body holds nothing of a replica.

Each change is a text substitution on Ray's HAProxy template, checked to apply exactly where
expected (``tests/unit/test_ray_hardening.py``): a Ray whose template differs fails loudly at the
HAProxy manager's start rather than running without the limits.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["LIMITS_FILE", "IngressLimits", "error_page", "harden_haproxy_template", "harden_worker", "write_limits"]

log = logging.getLogger(__name__)

LIMITS_FILE = "rankserve-ingress.json"  # beside HAProxy's config file (RAY_SERVE_HAPROXY_CONFIG_FILE_LOC)
SETUP_HOOK = "serving.ray_hardening.harden_worker"


@dataclass(frozen=True)
class IngressLimits:
    """HAProxy's limits in front of the replicas (see the module docstring)."""

    max_conn_per_replica: int = 64
    max_queue_per_replica: int = 64
    queue_timeout_ms: int = 50
    read_timeout_s: float = 5.0
    tls_cert_file: str | None = None  # PEM (certificate chain and key): HTTPS and gRPC over TLS on the API ports


def write_limits(haproxy_dir: Path, limits: IngressLimits) -> Path:
    """Write the limits where the HAProxy manager's hook reads them."""
    from serving.files import atomic_write_text

    haproxy_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = haproxy_dir / LIMITS_FILE
    atomic_write_text(path, json.dumps(asdict(limits)))
    return path


def _read_limits() -> IngressLimits:
    cfg = os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC")
    if not cfg:
        return IngressLimits()
    path = Path(cfg).parent / LIMITS_FILE
    try:
        return IngressLimits(**json.loads(path.read_text()))
    except FileNotFoundError:
        return IngressLimits()


def _substitutions(limits: IngressLimits) -> list[tuple[str, str, int]]:
    """(Ray's text, rankserve's, how many times it must occur) for the HAProxy template."""
    server_limits = f" maxconn {limits.max_conn_per_replica} maxqueue {limits.max_queue_per_replica}"
    read_s = max(1, round(limits.read_timeout_s))
    return [
        ("stats socket {{ config.socket_path }} mode 666 level admin",
         "stats socket {{ config.socket_path }} mode 600 level admin", 1),
        ("frontend prometheus\n    bind :{{ config.metrics_port }}",
         "frontend prometheus\n    bind 127.0.0.1:{{ config.metrics_port }}", 1),
        ("listen stats\n  bind *:{{ config.stats_port }}", "listen stats\n  bind 127.0.0.1:{{ config.stats_port }}", 1),
        ("defaults\n    mode http\n",
         f"defaults\n    mode http\n    timeout http-request {read_s}s\n"
         f"    timeout queue {limits.queue_timeout_ms}ms\n", 1),
        ("frontend http_frontend\n    bind {{ config.frontend_host }}:{{ config.frontend_port }}\n",
         "frontend http_frontend\n    bind {{ config.frontend_host }}:{{ config.frontend_port }}"
         + (f" ssl crt {limits.tls_cert_file} alpn h2,http/1.1" if limits.tls_cert_file else "")
         + "\n    option http-buffer-request\n", 1),
        ("    bind {{ config.grpc_frontend_host }}:{{ config.grpc_frontend_port }} proto h2\n",
         "    bind {{ config.grpc_frontend_host }}:{{ config.grpc_frontend_port }}"
         + (f" ssl crt {limits.tls_cert_file} alpn h2" if limits.tls_cert_file else "") + " proto h2\n", 1),
        ("{{ hc.default_server_directive }}\n", "{{ hc.default_server_directive }}" + server_limits + "\n", 3),
        # Serve's listing of applications answers anyone: rankserve's gRPC port serves Rank only
        ("    acl is_list_applications path /ray.serve.RayServeAPIService/ListApplications\n",
         "    acl is_list_applications path /ray.serve.RayServeAPIService/ListApplications\n"
         "    http-request return status 200 content-type application/grpc hdr grpc-status 7 "
         "hdr grpc-message \"not served\" if is_list_applications\n", 1),
    ]


def harden_haproxy_template(template: str, limits: IngressLimits) -> str:
    """Ray's HAProxy config template with rankserve's changes.

    Raises:
        RuntimeError: a change does not apply exactly as expected (another Ray version).
    """
    for old, new, count in _substitutions(limits):
        found = template.count(old)
        if found != count:
            raise RuntimeError(f"rankserve cannot harden Ray's HAProxy template: expected {count} occurrence(s) "
                               f"of {old!r}, found {found} (Ray version changed?)")
        template = template.replace(old, new)
    return template


def _node_ip() -> str:
    """The address this worker's Ray node was started on (``--node-ip-address``): the GCS's record
    of the node, not a guess from the routes (which names another interface on a host with several)."""
    import ray

    if not ray.is_initialized():  # (asking the runtime context would start a Ray of its own)
        return str(ray.util.get_node_ip_address())
    try:
        node_id = ray.get_runtime_context().get_node_id()
        for node in ray.nodes():
            if node.get("NodeID") == node_id and node.get("NodeManagerAddress"):
                return str(node["NodeManagerAddress"])
    except Exception:  # noqa: BLE001 - not connected yet: the next best answer
        pass
    return str(ray.util.get_node_ip_address())


def _node_address(address: str) -> str:
    """``[::]:port`` (every interface) as the node's own address and the same port."""
    if not address.startswith("[::]:"):
        return address
    return f"{_node_ip()}:{address.rsplit(':', 1)[1]}"


def error_page() -> str:
    """HAProxy's own answer (no replica could take a request, a replica that closed the connection)
    as the API's 503 with ``Retry-After``, instead of Ray's bare ``500 Internal Server Error``."""
    from serving.errors import BackendUnavailableError

    err = BackendUnavailableError("no replica could take the request; try again shortly", retry_after_s=1)
    body = json.dumps(err.to_body())
    head = [f"HTTP/1.1 {err.http_status} Service Unavailable", "Content-Type: application/json",
            f"Content-Length: {len(body.encode())}", "Cache-Control: no-cache",
            *(f"{k}: {v}" for k, v in err.headers().items())]
    return "\r\n".join(head) + "\r\n\r\n" + body


def _own_error_page(manager_cls: Any) -> None:
    """The HAProxy manager writes its error page once, at start (``HAProxyApi``): rankserve's replaces it there."""
    original = manager_cls._initialize_directories_and_error_files

    def initialize(self: Any) -> None:
        original(self)
        Path(self.cfg.error_file_path).write_text(error_page())

    manager_cls._initialize_directories_and_error_files = initialize


def _bind_grpc_to_node() -> None:
    from ray._common import tls_utils
    from ray.serve._private import default_impl, replica

    def add_grpc_address(server: Any, address: str) -> None:
        server.add_insecure_port(_node_address(address))

    def add_port_to_grpc_server(server: Any, address: str) -> int:
        port: int = tls_utils.add_port_to_grpc_server(server, _node_address(address))
        return port

    default_impl.add_grpc_address = add_grpc_address  # type: ignore[assignment]
    replica.add_port_to_grpc_server = add_port_to_grpc_server


def _own_grpc_ports() -> None:
    """Serve asks its gRPC servers not to share their port (``grpc.so_reuseport``) with the string
    ``"0"``, which gRPC does not read as off: two replicas of two rankserve clusters on one host then
    both bind the same port and the kernel splits connections between them (a request to one
    service answered by another). As the integer gRPC reads, a taken port is refused and Serve
    takes the next."""
    from ray.serve._private import grpc_util

    original = grpc_util.gRPCGenericServer.__init__

    def init(self: Any, service_handler_factory: Any, *, extra_options: Any = None) -> None:
        options = [(k, int(v)) if k == "grpc.so_reuseport" else (k, v) for k, v in (extra_options or [])]
        original(self, service_handler_factory, extra_options=options)  # type: ignore[arg-type]

    grpc_util.gRPCGenericServer.__init__ = init  # type: ignore[method-assign]


def harden_worker() -> None:
    """The Ray job's ``worker_process_setup_hook``: runs in each worker process before its actor."""
    _bind_grpc_to_node()
    _own_grpc_ports()
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        from ray.serve._private import haproxy

        haproxy.HAPROXY_CONFIG_TEMPLATE = harden_haproxy_template(haproxy.HAPROXY_CONFIG_TEMPLATE, _read_limits())
        _own_error_page(haproxy.HAProxyApi)
