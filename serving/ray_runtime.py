"""Ray start-up and shutdown: all Ray cluster calls of rankserve are made here."""

from __future__ import annotations

import logging
import os

__all__ = ["init_ray", "shutdown_ray"]

log = logging.getLogger(__name__)

# Local default: listeners on loopback, no usage stats, no token auth (Ray 2.60 writes one otherwise).
_LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DEDUP_LOGS": "1",
}


def init_ray(address: str = "local", *, num_cpus: int | None = None) -> None:
    """Start a local Ray cluster (``address="local"``) or connect to an existing one."""
    for k, v in _LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=True,
            configure_logging=True,
        )
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    log.info("ray started at %s", address)


def shutdown_ray() -> None:
    import ray

    try:
        from ray import serve

        serve.shutdown()
    except Exception as err:  # noqa: BLE001 - shutdown is best effort
        log.debug("serve.shutdown: %s", err)
    if ray.is_initialized():
        ray.shutdown()
