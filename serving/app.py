"""The Ray Serve application: one thin deployment around :class:`serving.pipeline.orchestration.RankPipeline`.

Topology (measured, see README "Topology"): the HTTP ingress and the batched pipeline live in
ONE deployment, so a request crosses the Serve proxy and nothing else; each extra handle hop
costs milliseconds on a small machine. Scale out by adding replicas of this deployment.
"""


import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import grpc_api
from serving.config import ConfigError, Settings
from serving.errors import (
    BackendUnavailableError,
    DeadlineExceededError,
    OverloadedError,
    PayloadTooLargeError,
    RankserveError,
)
from serving.index.faiss_index import load_index
from serving.metrics import Metrics
from serving.pipeline.crossing import CrossingStage
from serving.pipeline.features import FeatureTables
from serving.pipeline.orchestration import Prepared, RankPipeline
from serving.pipeline.ranking import RankingStage
from serving.pipeline.recall import RecallStage
from serving.proto import ranker_pb2
from serving.repository.registry import ModelRegistry
from serving.schemas import RankRequest, RankResponse, parse_rank_request, validate_rank_request
from serving.triton.caller import ModelCaller
from serving.triton.client import AsyncTritonClient
from serving.triton.config import read_config
from serving.triton.inprocess import InProcessClient

__all__ = ["RankingService", "app_from_env", "build_app", "create_pipeline"]

log = logging.getLogger("rankserve")

MAX_CONCURRENT_BATCHES = 2  # overlap one batch's crossing with the previous batch's Triton call


def make_recall(settings: Settings, registry: ModelRegistry, tables: FeatureTables, caller: ModelCaller,
                version: int) -> RecallStage:
    """The recall stage of one user tower version, with the FAISS index from the same version."""
    tower_dir = registry.version_dir(settings.user_tower_model, version)
    index = load_index(tower_dir / "items.faiss", use_gpu=settings.faiss_gpu)
    if index.n_items != tables.n_items:
        raise BackendUnavailableError(
            f"index of {settings.user_tower_model} v{version} has {index.n_items} items, catalogue has {tables.n_items}"
        )
    return RecallStage(tables, index, caller, settings.user_tower_model, version)


def create_pipeline(settings: Settings, client: AsyncTritonClient | InProcessClient) -> RankPipeline:
    """Load tables, index and model metadata and wire the stages (in-process; no Ray needed)."""
    registry = ModelRegistry(settings.model_repository)
    tables = FeatureTables.load(settings.marketplace_path)
    caller = ModelCaller(client, timeout_s=settings.triton_timeout_s, retries=settings.triton_retries)
    recall = make_recall(settings, registry, tables, caller, registry.traffic(settings.user_tower_model).live)
    max_rows = read_config(settings.model_repository, settings.ranker_model).max_batch_size
    return RankPipeline(settings, tables, registry, recall, CrossingStage(tables, settings.cross_backend),
                        RankingStage(caller, max_rows))


class RepositoryWatcher:
    """Follows traffic changes (push, promote, rollback) in the repository, once a second.

    The ranking traffic split is swapped as one dict; a new user tower version comes with its
    own index as one new recall stage, so a batch never pairs one version's user embedding with
    another version's index.
    """

    def __init__(self, settings: Settings, pipeline: RankPipeline, interval_s: float = 1.0) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.interval_s = interval_s
        self._stamp = self._read_stamp()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repository-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _read_stamp(self) -> tuple[tuple[str, int, int], ...]:
        repo = self.settings.model_repository
        out = []
        for name in self.pipeline.registry.models():
            t = repo / name / "traffic.json"
            out.append((name, t.stat().st_mtime_ns if t.exists() else 0, len(self.pipeline.registry.versions(name))))
        return tuple(out)

    def check(self) -> bool:
        """Apply a changed traffic split; True when something changed."""
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        p = self.pipeline
        p.refresh_traffic()
        tower = p.registry.traffic(self.settings.user_tower_model).live
        if tower != p.recall.version:
            p.recall = make_recall(self.settings, p.registry, p.tables, p.recall.caller, tower)
        log.info(json.dumps({"event": "traffic_changed", "traffic": {m: t.to_json() for m, t in p.traffic_split.items()},
                             "user_tower": tower}))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as err:  # noqa: BLE001 - a bad file must not kill the watcher; keep serving
                log.warning("repository watcher: %s", err)


def _error_response(err: RankserveError) -> JSONResponse:
    return JSONResponse(err.to_body(), status_code=err.http_status, headers=err.headers())


api = FastAPI(title="rankserve", version="1", docs_url=None, redoc_url=None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and methods answer in the same error shape as everything else."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": {"code": code, "message": f"{request.method} {request.url.path}: {exc.detail}"}},
                        status_code=exc.status_code)


@serve.deployment(name="rankserve")
@serve.ingress(api)
class RankingService:
    """Thin Serve wrapper: HTTP in, batched pipeline, HTTP out."""

    def __init__(self, settings: dict[str, Any], triton_url: str) -> None:
        logging.basicConfig(level=logging.INFO)
        self.settings = Settings.model_validate(settings)
        self.client = AsyncTritonClient(triton_url)
        self.pipeline = create_pipeline(self.settings, self.client)
        self._metrics = Metrics()
        self._pending = 0
        self._running = 0  # pipeline batches executing now
        self._batched.set_max_batch_size(self.settings.max_batch_candidates)
        self._batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self.watcher = RepositoryWatcher(self.settings, self.pipeline)
        self.watcher.start()
        log.info(
            json.dumps({"event": "replica_ready", "cross_backend": self.pipeline.crossing.backend,
                        "faiss_gpu": self.pipeline.recall.index.on_gpu, "batching": self.settings.batching})
        )

    # -- ranking ------------------------------------------------------------------------
    @api.post("/v1/rank")
    async def rank(self, request: Request) -> Response:
        """HTTP/JSON: ``POST /v1/rank``."""

        async def read() -> RankRequest:
            return parse_rank_request(await self._read_body(request), self.settings)

        try:
            result = await self._rank(read)
        except RankserveError as err:
            return _error_response(err)
        return JSONResponse(result.to_json())

    async def Rank(self, request: ranker_pb2.RankRequest,  # noqa: N802 - the gRPC method's name
                   grpc_context: RayServegRPCContext) -> ranker_pb2.RankResponse:
        """gRPC: ``rankserve.v1.Ranker/Rank`` through Serve's gRPC proxy (same rules as HTTP)."""

        async def read() -> RankRequest:
            payload = grpc_api.request_payload(request, self.settings.max_body_bytes)
            return validate_rank_request(payload, self.settings)

        try:
            result = await self._rank(read)
        except RankserveError as err:
            code, details, trailing = grpc_api.error_status(err)
            grpc_context.set_code(code)
            grpc_context.set_details(details)
            grpc_context.set_trailing_metadata(trailing)
            return ranker_pb2.RankResponse()
        return grpc_api.response_message(result)

    async def _rank(self, read: Callable[[], Awaitable[RankRequest]]) -> RankResponse:
        """Shed or admit, read and validate the request, run it through the (batched) pipeline
        within its deadline; count the outcome whichever protocol it came by.

        Raises:
            RankserveError: with its status; anything else is logged and becomes an internal error.
        """
        arrival = time.monotonic()
        rid: str | None = None
        try:
            if self._pending >= self.settings.max_queued_requests >= 0:
                self._metrics.shed.inc()
                raise OverloadedError(f"{self._pending} requests queued; try again shortly", retry_after_s=1)
            prep = self.pipeline.prepare(await read(), arrival=arrival)
            rid = prep.request_id
            self._pending += 1
            self._metrics.queue_depth.set(self._pending)
            try:
                left = prep.deadline - time.monotonic()
                result = await asyncio.wait_for(self._answer(prep), timeout=max(left, 0.001))
            except asyncio.TimeoutError as err:
                raise DeadlineExceededError(f"no answer within {1000 * (prep.deadline - arrival):.0f} ms") from err
            finally:
                self._pending -= 1
                self._metrics.queue_depth.set(self._pending)
            if isinstance(result, RankserveError):
                raise result
        except RankserveError as err:
            self._metrics.requests.labels(str(err.http_status)).inc()
            if err.http_status >= 500:
                log.warning(json.dumps({"event": "rank_error", "request_id": rid, "status": err.http_status,
                                        "error": err.message}))
            raise
        except Exception as err:  # a bug, not bad input: answer in the error shape, never a traceback
            log.exception(json.dumps({"event": "rank_internal_error", "request_id": rid, "error": repr(err)}))
            self._metrics.requests.labels("500").inc()
            raise RankserveError("internal error; see the server log") from err
        self._metrics.requests.labels("200").inc()
        self._metrics.latency_ms.observe((time.monotonic() - arrival) * 1000)
        if result.degraded:
            self._metrics.degraded.inc()
            log.warning(json.dumps({"event": "rank_degraded", "request_id": rid, "recall": result.recall}))
        return result

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"request body is {declared} bytes, the limit is {limit}", field="body")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes", field="body")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _answer(self, prep: Prepared) -> RankResponse | RankserveError:
        """A request that finds no batch running goes at once: waiting for a batch to fill would
        only add the batch wait to its latency. Requests that arrive while one runs are batched."""
        if self.settings.batching and self._running > 0:
            return await self._batched(prep)
        return (await self._run([prep]))[0]

    async def _run(self, batch: list[Prepared]) -> list[RankResponse | RankserveError]:
        self._running += 1  # before the first await: a request arriving next sees it
        try:
            results, stats = await self.pipeline.run_batch(batch)
        finally:
            self._running -= 1
        self._observe(stats)
        return results

    @serve.batch(
        max_batch_size=8192,
        batch_wait_timeout_s=0.004,
        max_concurrent_batches=MAX_CONCURRENT_BATCHES,
        batch_size_fn=lambda batch: sum(p.cost for p in batch),
    )
    async def _batched(self, batch: list[Prepared]) -> list[RankResponse | RankserveError]:
        return await self._run(batch)

    def _observe(self, stats: Any) -> None:
        self._metrics.batch_requests.observe(stats.requests)
        self._metrics.batch_rows.observe(stats.rows)
        for stage, ms in stats.stage_ms.items():
            self._metrics.stage_ms.labels(stage).observe(ms)

    # -- operations ---------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> Response:
        checks = await self._readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    async def _readiness(self) -> dict[str, bool]:
        checks: dict[str, bool] = {"index": self.pipeline.recall.index.n_items > 0}
        try:
            checks["triton"] = bool(await self.client.server_ready())
            checks[f"{self.pipeline.recall.model}:{self.pipeline.recall.version}"] = bool(
                await self.client.model_ready(self.pipeline.recall.model, str(self.pipeline.recall.version))
            )
            for name, traffic in self.pipeline.traffic_split.items():
                checks[f"{name}:{traffic.live}"] = bool(await self.client.model_ready(name, str(traffic.live)))
        except RankserveError:
            checks["triton"] = False
        return checks

    @api.get("/metrics")
    async def metrics(self) -> Response:
        for name, traffic in self.pipeline.traffic_split.items():
            self._metrics.model_version.labels(name).set(traffic.live)
        self._metrics.model_version.labels(self.settings.user_tower_model).set(self.pipeline.recall.version)
        return Response(self._metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        reg = self.pipeline.registry
        out = []
        for name in reg.models():
            traffic = reg.traffic(name)
            versions = []
            for v in reg.versions(name):
                try:
                    ready = bool(await self.client.model_ready(name, str(v)))
                except RankserveError:
                    ready = False
                meta = reg.meta(name, v)
                versions.append({"version": v, "state": "READY" if ready else "UNAVAILABLE",
                                 "created": meta.get("created"), "quality": meta.get("quality", {})})
            shadow = {f"v{v}": st.to_json() for (m, v), st in self.pipeline.shadow.items() if m == name}
            out.append({"name": name, "versions": versions, "traffic": traffic.to_json(), "shadow": shadow})
        return {"models": out, "cross_backend": self.pipeline.crossing.backend,
                "faiss": {"kind": self.pipeline.recall.index.kind, "on_gpu": self.pipeline.recall.index.on_gpu}}


def app_from_env(args: dict[str, str] | None = None) -> Any:
    """Serve application builder for ``serve run serving.app:app_from_env`` and KubeRay.

    Settings come from ``RANKSERVE_*``; ``RANKSERVE_TRITON_URL`` must name the node-local Triton.
    """
    settings = Settings.from_env()
    if not settings.triton_url:
        raise ConfigError("RANKSERVE_TRITON_URL must name a running Triton when deploying with serve run / KubeRay")
    return build_app(settings, settings.triton_url)


def build_app(settings: Settings, triton_url: str) -> Any:
    """The bound Serve application for ``serve.run``."""
    return RankingService.options(
        num_replicas=settings.num_replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=-1,
        # graceful shutdown: stop taking requests, let those in flight finish (up to 20 s)
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=20.0,
        ray_actor_options={"num_cpus": settings.replica_num_cpus},
        logging_config={"enable_access_log": settings.access_log},
    ).bind(settings.model_dump(mode="json"), triton_url)


