"""Ray and Ray Serve behind one small module: start-up, shutdown, and typed shims of Serve's decorators.

Owns: every Ray call of rankserve (``ray.init``, ``serve.start``, ``serve.shutdown``), the
ingress modes and their environment, and the typed shim :func:`ingress_deployment` (Serve's
decorators are untyped for a type checker; the shim gives the rest of the code a typed value).
Must not touch: ranking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from serving.config import Settings
from serving.errors import PortInUseError
from serving.files import private_dir
from serving.ray_hardening import SETUP_HOOK, IngressLimits, write_limits

if TYPE_CHECKING:
    import pyarrow as pa
    from fastapi import FastAPI
    from ray.serve.deployment import Deployment

__all__ = ["Ingress", "ensure_ray_token", "ingress_deployment", "init_ray", "read_parquet_table", "shutdown_ray",
           "start_serve"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

# Local default: listeners on loopback, no usage stats, token auth on. Each replica's
# inter-deployment gRPC server binds every interface (Ray 2.60 has no host option for it) and
# unpickles what it is sent; with token auth on, it refuses a call without the cluster's token.
_LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DEDUP_LOGS": "1",
}
_TOKEN_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def ensure_ray_token(path: Path) -> Path:
    """The local cluster's token file: 32 random bytes (hex), readable by this user only, made
    once. Every process of the cluster reads it through ``RAY_AUTH_TOKEN_PATH``; a driver of
    another user, or a host that reaches a Ray port, has no token and is refused."""
    import secrets

    if path.is_file() and path.stat().st_size > 0:
        path.chmod(0o600)
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    return path


def _apply_local_env() -> None:
    """Set the local-default environment, also when ``ray`` was imported before this call.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import, into
    ``ray_constants.ENABLE_RAY_CLUSTER``; while that is true, ``ray.init`` turns the node address
    127.0.0.1 into the machine's own address and gcs_server, raylet and the workers listen on every
    interface. rankserve's modules import ``ray.serve`` at the top, so the constant is brought in
    line with the environment here.
    """
    for k, v in _LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    from ray._private import ray_constants

    enabled = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].lower() in ("1", "true")
    ray_constants.ENABLE_RAY_CLUSTER = enabled


def _refresh_auth_config() -> None:
    """Make this process see the auth mode and token just set in its environment: Ray's C++ config
    and token loader read them once, when ``ray`` is imported, which rankserve does before this."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@dataclass(frozen=True)
class Ingress:
    """How requests reach the replicas, and on which loopback ports.

    ``haproxy``: Ray Serve's HAProxy ingress on ``port`` (and ``grpc_port``), load-balancing over
    every replica's own HTTP and gRPC server (the default: one stable address, no Python hop).
    ``direct``: clients talk to the replica's own servers, which take ``port``/``grpc_port``
    themselves (one replica per node; for comparison). ``proxy``: Serve's Python proxy (for
    comparison). ``drain_s`` bounds how long a stopping replica keeps serving its in-flight requests.
    """

    mode: str = "haproxy"
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 0
    drain_s: float = 5.0
    max_message_bytes: int = 256 * 1024
    runtime_dir: Path = Path(tempfile.gettempdir())
    limits: IngressLimits = IngressLimits()

    @classmethod
    def from_settings(cls, settings: Settings, *, port: int | None = None, grpc_port: int | None = None) -> Ingress:
        admitted = settings.max_queued_requests  # HAProxy lets in no more than a replica admits: it refuses the rest
        limits = IngressLimits(max_conn_per_replica=min(settings.ingress_max_conn_per_replica, admitted)
                               if admitted >= 0 else settings.ingress_max_conn_per_replica,
                               max_queue_per_replica=settings.ingress_max_queue_per_replica,
                               queue_timeout_ms=settings.ingress_queue_timeout_ms,
                               read_timeout_s=settings.read_timeout_s,
                               tls_cert_file=str(settings.tls_cert_file.resolve()) if settings.tls_cert_file else None)
        return cls(mode=settings.ingress, host=settings.host, port=settings.port if port is None else port,
                   grpc_port=settings.grpc_port if grpc_port is None else grpc_port,
                   drain_s=settings.drain_timeout_s, max_message_bytes=settings.max_body_bytes,
                   runtime_dir=settings.data_dir / "ingress", limits=limits)

    def environment(self) -> dict[str, str]:
        """Ray's variables for this mode; every Ray process reads them when it starts."""
        from serving.net import QUIET_PORTS, free_port

        env = {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
               # gRPC servers refuse a message over the HTTP body limit before decoding it
               "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(self.max_message_bytes),
               # how long a stopping ingress replica keeps taking requests before it drains
               "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(min(1.0, self.drain_s))}
        if self.mode == "haproxy":
            base = private_dir(self.haproxy_dir)
            write_limits(base, self.limits)  # read by the HAProxy manager's set-up hook (serving.ray_hardening)
            env.update({
                "RAY_SERVE_ENABLE_HA_PROXY": "1",
                "RAY_SERVE_HAPROXY_NBTHREAD": "1",  # two cores: one HAProxy thread beside Python
                "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",  # rankserve's /metrics counts requests itself
                # per-cluster ports and files, so that two clusters on one machine do not collide,
                # from a range that Ray, starting next, does not take its own ports from
                "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port(QUIET_PORTS)),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port(QUIET_PORTS)),
                "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port(QUIET_PORTS)),
                "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port(QUIET_PORTS)),
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
                "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
            })
        elif self.mode == "direct":
            env.update({
                "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
                "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(self.port),
                "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(self.port),
                "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(self.grpc_port or free_port(QUIET_PORTS)),
                "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(self.grpc_port or 65535),
            })
        return env

    @property
    def haproxy_dir(self) -> Path:
        # the admin socket's path must stay short (108 bytes): one directory per user and ingress port,
        # made private (serving.files.private_dir) before HAProxy puts its admin socket in it
        return Path(tempfile.gettempdir()) / f"rs{os.getuid()}-haproxy-{self.port}"

    def _haproxy_processes(self) -> list[Any]:
        """This machine's HAProxy processes of this ingress (their config lies in its folder)."""
        import psutil

        mine = []
        for p in psutil.process_iter(["name", "cmdline"]):
            cmdline = p.info["cmdline"] or []
            if (p.info["name"] or "").startswith("haproxy") and any(str(self.haproxy_dir) in a for a in cmdline):
                mine.append(p)
        return mine

    def stop_orphans(self, timeout_s: float = 5.0) -> list[int]:
        """Stop this ingress's HAProxy processes that no Ray process owns any more: a Ray cluster
        that died abruptly (``rankserve serve`` SIGKILLed) leaves its HAProxy listening on the
        port, since Ray's HAProxy manager starts it without a parent-death signal. Called before
        the ports are checked; returns the pids stopped."""
        import psutil

        orphans = []
        for p in self._haproxy_processes():
            try:
                parent = p.parent()
                if parent is None or not parent.name().startswith("ray::"):
                    p.terminate()
                    orphans.append(p)
            except psutil.NoSuchProcess:
                continue
        _kill_stragglers(orphans, timeout_s)
        return [p.pid for p in orphans]

    def stop_accepting(self, timeout_s: float) -> int:
        """Close this machine's ingress listeners gracefully, before Ray stops the ingress.

        ``haproxy`` mode: each of this ingress's HAProxy processes gets SIGUSR1 (HAProxy's soft
        stop): it closes its listeners at once, so new connections are refused; it answers the
        requests it holds, closing each connection after its answer; then it exits. This waits for
        that, at most ``timeout_s``. Ray's own stop SIGKILLs HAProxy, which resets a request still
        crossing it. Returns how many processes were soft-stopped (0 in the other modes, whose
        listeners Serve drains itself).
        """
        import psutil

        if self.mode != "haproxy":
            return 0
        mine = []
        for p in self._haproxy_processes():
            try:
                p.send_signal(signal.SIGUSR1)
                mine.append(p)
            except psutil.NoSuchProcess:
                continue
        t0 = time.monotonic()
        _, alive = psutil.wait_procs(mine, timeout=timeout_s)
        log.info("ingress: %d HAProxy process(es) soft-stopped, %d exited in %.2f s", len(mine),
                 len(mine) - len(alive), time.monotonic() - t0)
        if alive:
            log.warning("ingress: %d HAProxy process(es) still hold connections after %.1f s; Ray stops them",
                        len(alive), timeout_s)
        return len(mine)


# A local raylet now and then never registers (6 of 193 local sessions on a 2-core machine in one
# day, with no log of its own: it dies before logging starts), or a GCS never writes its port
# file; Ray gives up after 30 s either way. A second start has worked every time so far.
_LOCAL_START_ATTEMPTS = 2
_START_TIMEOUTS = ("timed out during startup", "Timed out waiting for file")


def _is_node_start_timeout(err: Exception) -> bool:
    return any(t in str(err) for t in _START_TIMEOUTS)


def stop_orphaned_ray_processes(timeout_s: float = 10.0) -> list[str]:
    """Stop this process's child processes that a failed ``ray.init`` left: those of a Ray session
    (``/tmp/ray/session_*``) it is not connected to (GCS, monitor, log monitor), and forks that
    never reached ``exec`` (their command line is still this process's own: a child stuck between
    Ray's fork and exec). Other children (Triton) are left alone. Returns what was stopped, as
    ``name[pid]`` (``fork[pid]`` for the forks), for the log."""
    import psutil
    import ray
    from ray._common.utils import get_default_ray_temp_dir

    if ray.is_initialized():
        return []
    marker = os.path.join(get_default_ray_temp_dir(), "session_")
    me = psutil.Process()
    own_cmdline = me.cmdline()
    orphans, names = [], []
    for child in me.children(recursive=True):
        try:
            cmdline = child.cmdline()
            fork = cmdline == own_cmdline
            if fork or any(marker in arg for arg in cmdline):
                names.append(f"{'fork' if fork else child.name()}[{child.pid}]")
                # a fork runs this process's code and signal handlers (Ray's turn SIGTERM into
                # SystemExit): it is killed outright
                if fork:
                    child.kill()
                else:
                    child.terminate()
                orphans.append(child)
        except psutil.NoSuchProcess:
            continue
    _kill_stragglers(orphans, timeout_s)
    return names


def _kill_stragglers(signalled: list[Any], timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for processes already told to stop; SIGKILL those still alive."""
    import psutil

    _, alive = psutil.wait_procs(signalled, timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def init_ray(address: str = "local", *, ingress: Ingress | None = None, num_cpus: int | None = None,
             token_file: Path | None = None) -> None:
    """Start a local Ray cluster (``address="local"``) with ``ingress``'s environment and token
    auth (the token in ``token_file``, made if missing; default: Ray's own ``~/.ray/auth_token``),
    or connect to an existing one (whose processes already have theirs, and whose token this
    process's environment names)."""
    import ray

    if ray.is_initialized():
        return
    if not sys.stdout.isatty():  # actors' lines relayed to a file or a pipe: no colour codes in them
        os.environ["RAY_COLOR_PREFIX"] = "0"
    if address == "local":
        _apply_local_env()
        if not any(k in os.environ for k in _TOKEN_ENV):
            token = ensure_ray_token(token_file or Path.home() / ".ray" / "auth_token")
            os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
        _refresh_auth_config()
        mode = os.environ.get("RAY_AUTH_MODE", "token")
        if mode.lower() != "token":
            log.warning("ray: token auth is off (RAY_AUTH_MODE=%s): any host that reaches a replica's gRPC port "
                        "may run code in it", mode)
        os.environ.update((ingress or Ingress()).environment())
        for attempt in range(1, _LOCAL_START_ATTEMPTS + 1):
            try:
                ray.init(
                    address="local",
                    runtime_env={"worker_process_setup_hook": SETUP_HOOK},
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                    configure_logging=True,
                )
                break
            except Exception as err:  # a bare Exception (raylet) or a RuntimeError (GCS port file)
                if attempt == _LOCAL_START_ATTEMPTS or not _is_node_start_timeout(err):
                    raise
                stopped = stop_orphaned_ray_processes()
                log.warning("ray: the local node did not start (%s); stopped what it left (%s), starting it "
                            "again", err, ", ".join(stopped) or "nothing")
        node_ip = ray.util.get_node_ip_address()
        if node_ip != "127.0.0.1":
            log.warning("ray: local node listens on %s, not loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1?)", node_ip)
    else:
        ray.init(address=address, runtime_env={"worker_process_setup_hook": SETUP_HOOK},
                 logging_level=logging.WARNING)
    log.info("ray started at %s", address)


def start_serve(ingress: Ingress) -> None:
    """Start Serve's ingress for HTTP and, when ``ingress.grpc_port`` > 0, gRPC with the
    ``rankserve.v1.Ranker`` service.

    In ``haproxy`` mode, HAProxy's own error answers (no replica could take a request) get the
    API's error shape (``serving.ray_hardening``). In ``direct`` mode Serve's Python
    proxy still runs (Ray needs it) on a free port; clients use the replicas' ports.
    """
    from ray import serve
    from ray.serve.config import gRPCOptions

    from serving.grpc_api import SERVICER_FUNCTION
    from serving.net import QUIET_PORTS, free_port

    direct = ingress.mode == "direct"
    port = free_port(QUIET_PORTS) if direct else ingress.port
    grpc_port = (free_port(QUIET_PORTS) if direct else ingress.grpc_port) if ingress.grpc_port else 0
    grpc = gRPCOptions(port=grpc_port, grpc_servicer_functions=[SERVICER_FUNCTION]) if grpc_port else None
    try:
        serve.start(http_options={"host": ingress.host, "port": port}, grpc_options=grpc)
    except RuntimeError as err:  # Ray's error for a port taken after rankserve checked it (a race)
        taken = _port_error(err, ingress)
        if taken is None:
            raise
        raise taken from err
    log.info("serve: %s ingress, http %s:%d, grpc %s", ingress.mode, ingress.host, ingress.port,
             ingress.grpc_port or "off")


_BIND_FAILURE = re.compile(r"(?:cannot bind socket \(Address already in use\) for \[|Failed to bind to address ')"
                           r"[^\]']*:(\d+)")


def _port_error(err: Exception, ingress: Ingress) -> PortInUseError | None:
    """The ingress's bind failure (HAProxy's or Serve's proxy's) as a :class:`PortInUseError` that
    names the setting to change; ``None`` for any other error."""
    found = _BIND_FAILURE.search(str(err))
    if not found:
        return None
    port = int(found.group(1))
    setting = "RANKSERVE_GRPC_PORT" if port == ingress.grpc_port else "RANKSERVE_PORT"
    return PortInUseError(f"port {ingress.host}:{port} is in use by another process",
                          hint=f"set {setting} to a free port (e.g. {setting}=<port> make serve) or stop that process")


def shutdown_ray(serve_timeout_s: float = 30.0) -> None:
    """Stop Serve gracefully (replicas finish and close, at most ``serve_timeout_s``; 0 skips it),
    then disconnect from Ray, which stops a local cluster's processes."""
    import ray

    if serve_timeout_s > 0 and ray.is_initialized():
        try:
            from ray.serve.context import _disconnect, _get_global_client

            # serve.shutdown() waits up to 30 s with no way to say less; its client's shutdown takes a bound
            client = _get_global_client(raise_if_no_controller_running=False)
            if client is not None:
                client.shutdown(timeout_s=serve_timeout_s)
            _disconnect()
        except Exception as err:  # noqa: BLE001 - shutdown is best effort
            log.debug("serve shutdown: %s", err)
    if ray.is_initialized():
        ray.shutdown()
    else:  # a start-up interrupted half-way: stop what it left
        stopped = stop_orphaned_ray_processes()
        if stopped:
            log.info("ray: stopped what an interrupted start left: %s", ", ".join(stopped))


def read_parquet_table(paths: list[str], columns: list[str]) -> pa.Table:
    """``columns`` of the Parquet files ``paths`` read by the cluster's workers with Ray Data (the
    files on a volume every node mounts), as one table on this driver."""
    import pyarrow as pa
    import ray
    import ray.data

    blocks = ray.get(ray.data.read_parquet(paths, columns=columns).to_arrow_refs())
    return pa.concat_tables(blocks)


def ingress_deployment(cls: type, api: FastAPI, *, name: str, **options: Any) -> Deployment:
    """``@serve.deployment(name=..., **options)`` over ``@serve.ingress(api)`` of ``cls``, typed."""
    from ray import serve

    deployment: Deployment = serve.deployment(name=name, **options)(serve.ingress(api)(cls))
    return deployment
