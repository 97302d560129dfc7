"""The Ray Serve application: one thin deployment around :class:`serving.service.RankService`.

Owns: the Serve deployment (its options, its HTTP and gRPC ingress by inheritance, the batcher it
gives the service) and the application builders for ``serve.run``, ``serve run`` and KubeRay
(``serving.app:app_from_env``). Must not touch: ranking, admission or wire formats.

Topology (measured, see docs/architecture.md, "Topology"): the HTTP ingress and the batched pipeline live in
ONE deployment, so a request crosses the ingress and nothing else; each extra handle hop costs
milliseconds on a small machine. Scale out by adding replicas of this deployment.
"""

from __future__ import annotations

import logging
from typing import Any

from serving.config import ConfigError, Settings, node_triton
from serving.grpc_api import GrpcIngress
from serving.http_api import HttpIngress, api
from serving.ray_runtime import ingress_deployment
from serving.service import RankService
from serving.triton.client import AsyncTritonClient, TritonEndpoint

__all__ = ["RankingReplica", "app_from_env", "build_app"]

class RankingReplica(HttpIngress, GrpcIngress):
    """One Serve replica: a :class:`RankService` behind the HTTP routes and the gRPC method."""

    def __init__(self, settings: dict[str, Any], triton_url: str, triton_key: str | None = None) -> None:
        logging.basicConfig(level=logging.INFO)
        s = Settings.model_validate(settings)
        url, key = node_triton() or (triton_url, triton_key)  # the node's own Triton, where the node names one
        if not url:
            raise ConfigError("no Triton for this replica: set RANKSERVE_TRITON_URL on every node that runs "
                              "replicas (its node-local Triton), or pass one when building the application")
        triton = TritonEndpoint(url, key)
        self.service = RankService.create(s, AsyncTritonClient.for_url(url, s.triton_shared_memory, key), triton)

    async def __del__(self) -> None:
        """Serve calls this when the replica stops: stop following the repository, release Triton."""
        await self.service.close()


RankingDeployment = ingress_deployment(RankingReplica, api, name="rankserve")


def app_from_env(args: dict[str, str] | None = None) -> Any:
    """Serve application builder for ``serve run serving.app:app_from_env`` and KubeRay.

    Settings come from ``RANKSERVE_*`` of the process that builds the application (on KubeRay, the
    head). Each replica calls the Triton its own node names in ``RANKSERVE_TRITON_URL`` (a worker
    pod's env); the builder's, if any, is the fallback, so the head needs none.
    """
    settings = Settings.from_env()
    key = settings.triton_key.get_secret_value() if settings.triton_key else None
    return build_app(settings, TritonEndpoint(settings.triton_url or "", key))


def build_app(settings: Settings, triton: TritonEndpoint) -> Any:
    """The bound Serve application for ``serve.run``: its replicas call ``triton`` (unless their
    node names its own)."""
    per_node: dict[str, Any] = {"max_replicas_per_node": settings.max_replicas_per_node} \
        if settings.max_replicas_per_node else {}
    return RankingDeployment.options(
        **per_node,
        num_replicas=settings.num_replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        # a backstop: rankserve's own admission (max_queued_requests) sheds long before this
        max_queued_requests=settings.max_ongoing_requests,
        # graceful shutdown: stop taking requests, let those in flight finish within the drain bound
        graceful_shutdown_wait_loop_s=0.2,
        graceful_shutdown_timeout_s=settings.drain_timeout_s,
        ray_actor_options={"num_cpus": settings.replica_num_cpus},
        logging_config={"enable_access_log": settings.access_log},
    ).bind(settings.model_dump(mode="json"), triton.url, triton.key)
