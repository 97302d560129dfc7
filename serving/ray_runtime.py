"""Ray and Ray Serve behind one small module: start-up, shutdown, and typed shims of Serve's decorators.

Owns: every Ray call of rankserve (``ray.init``, ``serve.start``, ``serve.shutdown``) and the
typed shims :func:`ingress_deployment` and :func:`serve_batcher` (Serve's decorators are untyped
for a type checker; the shims give the rest of the code typed values). Must not touch: ranking.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve.deployment import Deployment

__all__ = ["ingress_deployment", "init_ray", "serve_batcher", "shutdown_ray", "start_serve"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

# Local default: listeners on loopback, no usage stats, no token auth (Ray 2.60 writes one otherwise).
_LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DEDUP_LOGS": "1",
}


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


def init_ray(address: str = "local", *, num_cpus: int | None = None) -> None:
    """Start a local Ray cluster (``address="local"``) or connect to an existing one."""
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        _apply_local_env()
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=True,
            configure_logging=True,
        )
        node_ip = ray.util.get_node_ip_address()
        if node_ip != "127.0.0.1":
            log.warning("ray: local node listens on %s, not loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1?)", node_ip)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    log.info("ray started at %s", address)


def start_serve(host: str, port: int, grpc_port: int = 0) -> None:
    """Start Serve's HTTP proxy on ``host:port`` and, when ``grpc_port`` > 0, its gRPC proxy with
    the ``rankserve.v1.Ranker`` service.

    Ray 2.60's gRPC proxy has no host option: it listens on ``[::]:grpc_port``, every interface
    (as each replica's internal gRPC server already does on a random port).
    """
    from ray import serve
    from ray.serve.config import gRPCOptions

    from serving.grpc_api import SERVICER_FUNCTION

    grpc = gRPCOptions(port=grpc_port, grpc_servicer_functions=[SERVICER_FUNCTION]) if grpc_port else None
    serve.start(http_options={"host": host, "port": port}, grpc_options=grpc)
    log.info("serve: http %s:%d, grpc %s", host, port, f"[::]:{grpc_port}" if grpc_port else "off")


def shutdown_ray() -> None:
    import ray

    try:
        from ray import serve

        serve.shutdown()
    except Exception as err:  # noqa: BLE001 - shutdown is best effort
        log.debug("serve.shutdown: %s", err)
    if ray.is_initialized():
        ray.shutdown()


def ingress_deployment(cls: type, api: FastAPI, *, name: str, **options: Any) -> Deployment:
    """``@serve.deployment(name=..., **options)`` over ``@serve.ingress(api)`` of ``cls``, typed."""
    from ray import serve

    deployment: Deployment = serve.deployment(name=name, **options)(serve.ingress(api)(cls))
    return deployment


def serve_batcher(*, max_batch_size: int, batch_wait_timeout_s: float, max_concurrent_batches: int,
                  size_fn: Callable[[Sequence[T]], int]
                  ) -> Callable[[Callable[[list[T]], Coroutine[Any, Any, list[R]]]], Callable[[T], Awaitable[R]]]:
    """A factory that batches concurrent calls with ``@serve.batch``: given a batch function, it
    returns a per-item function whose concurrent calls run as batches bounded by ``size_fn``."""
    from ray import serve

    def make(fn: Callable[[list[T]], Coroutine[Any, Any, list[R]]]) -> Callable[[T], Awaitable[R]]:
        batched: Callable[[T], Awaitable[R]] = serve.batch(
            max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
            max_concurrent_batches=max_concurrent_batches, batch_size_fn=size_fn,
        )(fn)
        return batched

    return make
