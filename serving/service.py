"""The ranking service, protocol-neutral: admission, deadlines, dispatch, readiness, the models view.

Owns: what happens to a ranking request between the wire format and the pipeline (shed or admit,
deadline, idle dispatch or batching, counting the outcome, handing the answer to the served log),
what happens to an events call (the same keys, handed to the event log), the readiness checks, the
``/v1/models`` and ``/v1/scenarios`` views and the metrics. HTTP (``serving.http_api``), gRPC (``serving.grpc_api``)
and the Serve deployment (``serving.app``) are thin wrappers around one :class:`RankService`.
Must not touch: wire formats, Ray (the batcher comes in as a function), files (the served log and
the events are ``serving.feedback``'s).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from serving.auth import Access
from serving.batching import DeadlineBatcher
from serving.config import Settings
from serving.errors import BackendUnavailableError, DeadlineExceededError, OverloadedError, RankserveError
from serving.feedback.events import Event
from serving.feedback.recorder import FeedbackRecorder
from serving.metrics import NO_SCENARIO, Metrics, merge_expositions
from serving.pipeline.assemble import create_pipeline, make_caller
from serving.pipeline.orchestration import BatchStats, Prepared, RankPipeline
from serving.pipeline.scenario import DEFAULT_SCENARIO
from serving.pipeline.shadow import ShadowStats
from serving.repository.followers import ReplicaFollowers
from serving.repository.nodes import live_metrics
from serving.repository.registry import ModelRegistry
from serving.repository.scenarios import ScenarioStore
from serving.schemas import RankRequest, RankResponse
from serving.triton.caller import AsyncInferClient
from serving.triton.client import TritonEndpoint
from serving.triton.onnx import backend_of

__all__ = ["ReadinessClient", "RankService", "Result", "drain_flag"]

log = logging.getLogger("rankserve")

Result = RankResponse | RankserveError


def _discard(task: asyncio.Future[Result]) -> None:
    """Retrieve an abandoned task's outcome, so that asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _shadow_sums(exposition: str) -> dict[tuple[str, int], ShadowStats]:
    """Shadow comparison sums per (model, version) from an exposition of the service's metrics."""
    fields = {"rankserve_shadow_requests": "requests", "rankserve_shadow_failures": "failures",
              "rankserve_shadow_rank_correlation_sum": "spearman_sum", "rankserve_shadow_overlap_at_k_sum": "overlap_sum",
              "rankserve_shadow_abs_score_diff_sum": "mean_abs_score_diff_sum"}
    out: dict[tuple[str, int], ShadowStats] = {}
    for fam in text_string_to_metric_families(exposition):
        attr = fields.get(fam.name)
        if attr is None:
            continue
        for sample in fam.samples:
            st = out.setdefault((sample.labels["model"], int(sample.labels["version"])), ShadowStats())
            setattr(st, attr, type(getattr(st, attr))(sample.value))
    return out


def drain_flag(settings: Settings) -> Path:
    """The file whose presence tells the replicas behind ``settings.port`` that the server is
    stopping: they answer new requests 503 and report not ready, and finish those in flight."""
    return settings.data_dir / "ingress" / f"draining-{settings.port}"


class ReadinessClient(AsyncInferClient, Protocol):
    """The Triton client, as readiness sees it (``serving.triton.client.AsyncTritonClient``)."""

    async def server_ready(self) -> bool: ...
    async def model_ready(self, name: str, version: str = "") -> bool: ...


class RankService:
    """Ranks requests through the pipeline and answers operations queries.

    Args:
        settings: limits, deadlines, batching.
        pipeline: the ranking pipeline.
        client: Triton, for readiness and model state.
        registry: the model repository, for the models view.
        followers: follow the repository into the pipeline (stopped by :meth:`close`).
        feedback: the served log and the events (closed by :meth:`close`); None: neither is recorded,
            and events calls are answered 503.

    With ``settings.batching`` requests go through a :class:`serving.batching.DeadlineBatcher`;
    without, each runs alone.
    """

    def __init__(self, settings: Settings, pipeline: RankPipeline, client: ReadinessClient, registry: ModelRegistry,
                 *, followers: ReplicaFollowers | None = None, feedback: FeedbackRecorder | None = None) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.client = client
        self.registry = registry
        self.metrics = Metrics()
        self.followers = followers
        self.batcher = DeadlineBatcher(self.run_batch, max_cost=settings.max_batch_candidates,
                                       max_concurrent=settings.max_concurrent_batches,
                                       wait_s=settings.batch_wait_timeout_s) if settings.batching else None
        self._pending = 0  # admitted and not yet answered
        self._drain_flag = drain_flag(settings)
        self.draining = False
        self._quiet: dict[str, tuple[float, int]] = {}  # error code -> (last logged, not logged since)
        self.access = Access(settings.auth_mode, settings.keys_file)
        self.feedback = feedback

    @property
    def pending(self) -> int:
        """Requests admitted and not yet answered."""
        return self._pending

    def _check_draining(self) -> bool:
        if not self.draining and self._drain_flag.exists():  # a stat per request: ~2 us
            self.draining = True
            log.warning(json.dumps({"event": "draining", "in_flight": self._pending}))
        return self.draining

    @classmethod
    def create(cls, settings: Settings, client: ReadinessClient, triton: TritonEndpoint | None = None) -> RankService:
        """The service of one replica: pipeline, its followers of the repository (started; they also
        load pushed versions into ``triton``) and metrics."""
        registry = ModelRegistry.of(settings)
        pipeline = create_pipeline(settings, client, registry)
        service = cls(settings, pipeline, client, registry)
        service.feedback = FeedbackRecorder(settings, service.metrics)
        service.followers = ReplicaFollowers(settings, registry, pipeline.cell, make_caller(settings, client),
                                             triton=triton, metrics=service.replica_metrics)
        service.followers.start()
        log.info(json.dumps({"event": "replica_ready", "cross_backend": pipeline.crossing.backend,
                             "faiss_gpu": pipeline.recall.index.on_gpu, "batching": settings.batching}))
        return service

    async def close(self) -> None:
        """Stop following the repository, write and close the served log's and the events' files,
        and release the Triton client (the replica is stopping)."""
        if self.followers is not None:
            self.followers.stop()
        if self.feedback is not None:
            await asyncio.to_thread(self.feedback.close, self.settings.drain_timeout_s)
        await self.client.close()

    # -- ranking ------------------------------------------------------------------------
    async def rank(self, read: Callable[[], Awaitable[RankRequest]], authorization: str | None = None) -> RankResponse:
        """Check the caller's key (``authorization``: ``Bearer <key>``), shed or admit, read and
        validate the request, run it through the (batched) pipeline within its deadline; count the
        outcome whichever protocol it came by.

        Raises:
            RankserveError: with its status; anything else is logged and becomes an internal error.
        """
        arrival = time.monotonic()
        rid: str | None = None
        scenario = NO_SCENARIO  # the metrics' label: a served scenario's name, never a client's string
        version = ""  # the metrics' label: the version chosen for the request, once it is
        try:
            self.access.check(authorization, "rank")
            if self._check_draining():
                raise BackendUnavailableError("the server is stopping; try again shortly", retry_after_s=1)
            if self._pending >= self.settings.max_queued_requests >= 0:
                self.metrics.shed.inc()
                raise OverloadedError(f"{self._pending} requests queued; try again shortly",
                                      retry_after_s=self._drain_estimate_s())
            req = await read()
            live = self.pipeline.live  # one snapshot for the request, from its scenario to its answer
            scenario = live.scenario(req.scenario).name
            prep = self.pipeline.prepare(req, arrival=arrival, live=live)
            rid, version = prep.request_id, str(prep.version)
            result = await self._within_deadline(prep)
        except RankserveError as err:
            self.metrics.requests.labels(str(err.http_status), scenario, version).inc()
            if err.http_status >= 500:
                self._log_error(rid, err)
            raise
        except Exception as err:  # a bug, not bad input: answer in the error shape, never a traceback
            log.exception(json.dumps({"event": "rank_internal_error", "request_id": rid, "error": repr(err)}))
            self.metrics.requests.labels("500", scenario, version).inc()
            raise RankserveError("internal error; see the server log") from err
        self.metrics.requests.labels("200", scenario, version).inc()
        self.metrics.latency_ms.labels(scenario, version).observe((time.monotonic() - arrival) * 1000)
        if self.feedback is not None:
            self.feedback.answered(req, result)
        if result.degraded:
            self.metrics.degraded.inc()
            log.warning(json.dumps({"event": "rank_degraded", "request_id": rid, "recall": result.recall}))
        return result

    async def post_events(self, read: Callable[[], Awaitable[list[Event]]], authorization: str | None = None) -> int:
        """Check the caller's key (role ``rank``: whoever may rank may say what users did with the
        answers), read and validate the events, and store them all (or none); the number stored.

        Raises:
            RankserveError: with its status (422 for a malformed event, naming it; 503 while
                stopping or when the event log is full).
        """
        self.access.check(authorization, "rank")
        if self._check_draining():
            raise BackendUnavailableError("the server is stopping; try again shortly", retry_after_s=1)
        if self.feedback is None:
            raise BackendUnavailableError("this replica records no events")
        events = await read()
        try:
            return self.feedback.posted(events)
        except RankserveError:
            raise
        except Exception as err:  # a bug, not bad input: answer in the error shape, never a traceback
            log.exception(json.dumps({"event": "events_internal_error", "error": repr(err)}))
            raise RankserveError("internal error; see the server log") from err

    def _log_error(self, rid: str | None, err: RankserveError) -> None:
        """One line per failed request, except sheds and deadlines: under overload those come by
        the hundred a second, so they are logged at most once a second each, with a count (the
        metrics count every one)."""
        if not isinstance(err, (OverloadedError, DeadlineExceededError, BackendUnavailableError)):
            log.warning(json.dumps({"event": "rank_error", "request_id": rid, "status": err.http_status,
                                    "error": err.message}))
            return
        now = time.monotonic()
        last, n = self._quiet.get(err.code, (0.0, 0))
        if now - last >= 1.0:
            log.warning(json.dumps({"event": "rank_error", "request_id": rid, "status": err.http_status,
                                    "error": err.message, "same_since_last_line": n}))
            self._quiet[err.code] = (now, 0)
        else:
            self._quiet[err.code] = (last, n + 1)

    async def _within_deadline(self, prep: Prepared) -> RankResponse:
        """The request's answer, or its 504 at its deadline. Not ``asyncio.wait_for``: a Triton call
        cancelled at the deadline ends as a Triton error, the pipeline degrades it into an answer,
        and ``wait_for`` would hand that late answer back instead of the timeout."""
        self._pending += 1
        self.metrics.queue_depth.set(self._pending)
        task = asyncio.ensure_future(self._dispatch(prep))
        try:
            done, _ = await asyncio.wait({task}, timeout=max(prep.deadline - time.monotonic(), 0.0))
        finally:
            self._pending -= 1
            self.metrics.queue_depth.set(self._pending)
        if not done:
            task.cancel()  # nobody waits for this answer any more
            task.add_done_callback(_discard)
            raise DeadlineExceededError(f"no answer within {1000 * (prep.deadline - prep.arrival):.0f} ms")
        result = task.result()
        if isinstance(result, RankserveError):
            raise result
        return result

    async def _dispatch(self, prep: Prepared) -> Result:
        if self.batcher is not None:
            return await self.batcher.submit(prep)
        return (await self.run_batch([prep]))[0]

    def _drain_estimate_s(self) -> float:
        """Seconds the admitted requests need (Retry-After of a shed request), 1 s at least."""
        if self.batcher is None:
            return 1.0
        need = self.batcher.throughput.seconds_for(self._pending * self.settings.recall_n)
        return max(1.0, need or 1.0)

    async def run_batch(self, batch: list[Prepared]) -> list[Result]:
        """Run one batch through the pipeline and record its figures; one result per request."""
        results, stats = await self.pipeline.run_batch(batch)
        if len(results) != len(batch):  # the batch contract, checked where batches are formed
            raise RankserveError(f"pipeline produced {len(results)} answers for {len(batch)} requests")
        self._observe(stats)
        return results

    def _observe(self, stats: BatchStats) -> None:
        self.metrics.batch_requests.observe(stats.requests)
        self.metrics.batch_rows.observe(stats.rows)
        for stage, ms in stats.stage_ms.items():
            self.metrics.stage_ms.labels(stage).observe(ms)
        for n in stats.group_scenarios:
            self.metrics.batch_scenarios.observe(n)

    # -- operations ---------------------------------------------------------------------
    async def readiness(self) -> dict[str, bool]:
        """Index loaded, Triton ready, and every version that takes traffic ready in Triton."""
        live = self.pipeline.live
        recall = live.recall
        checks: dict[str, bool] = {"accepting": not self._check_draining(), "index": recall.index.n_items > 0}
        try:
            checks["triton"] = bool(await self.client.server_ready())
            checks[f"{recall.model}:{recall.version}"] = bool(await self.client.model_ready(recall.model,
                                                                                             str(recall.version)))
            for name, traffic in live.traffic.items():
                checks[f"{name}:{traffic.live}"] = bool(await self.client.model_ready(name, str(traffic.live)))
        except RankserveError:
            checks["triton"] = False
        return checks

    def replica_metrics(self) -> bytes:
        """Prometheus exposition of this replica's own metrics, with the live versions, the traffic
        split and the shadow comparison sums."""
        m = self.metrics
        live = self.pipeline.live
        m.traffic_percent.clear()  # versions that left the traffic split leave the exposition too
        for name, traffic in live.traffic.items():
            m.model_version.labels(name).set(traffic.live)
            m.traffic_percent.labels(name, str(traffic.live), "live").set(100.0 - traffic.canary_percent)
            if traffic.canary_version is not None:
                m.traffic_percent.labels(name, str(traffic.canary_version), "canary").set(traffic.canary_percent)
            if traffic.shadow_version is not None:
                m.traffic_percent.labels(name, str(traffic.shadow_version), "shadow").set(traffic.shadow_percent)
        tower = self.settings.user_tower_model, str(live.recall.version)
        m.model_version.labels(tower[0]).set(live.recall.version)
        m.traffic_percent.labels(*tower, "live").set(100.0)
        for name, sc in live.scenarios.items():
            m.scenario_version.labels(name).set(sc.version)
        cat = live.catalogue
        m.catalogue_version.set(cat.version)
        m.catalogue_items.set(cat.tables.n_items)
        m.catalogue_blocked.set(cat.n_blocked)
        for (model, version), st in list(self.pipeline.shadow.stats.items()):
            labels = (model, str(version))
            m.shadow_requests.labels(*labels).set(st.requests)
            m.shadow_failures.labels(*labels).set(st.failures)
            m.shadow_rank_corr.labels(*labels).set(st.spearman_sum)
            m.shadow_overlap.labels(*labels).set(st.overlap_sum)
            m.shadow_abs_diff.labels(*labels).set(st.mean_abs_score_diff_sum)
        return m.render()

    def metrics_text(self) -> bytes:
        """The whole service's metrics: this replica's, summed with the snapshots every other live
        replica publishes beside the model repository (``serving.repository.nodes``)."""
        others = live_metrics(self.registry.heartbeats, exclude=self.followers.node_key) if self.followers else []
        own = self.replica_metrics().decode()
        return merge_expositions([own, *others]).encode() if others else own.encode()

    def scenarios_view(self) -> dict[str, Any]:
        """The scenarios this replica serves (each at its live version, limits resolved), with the
        versions the repository holds and those it would not serve here."""
        on_disk = {row["name"]: row for row in ScenarioStore(self.registry.repo).listing()}
        out = []
        for name, sc in sorted(self.pipeline.live.scenarios.items()):
            row = on_disk.get(name, {})
            out.append({**sc.describe(), "versions": row.get("versions", []), "history": row.get("history", [])})
        refused = self.followers.refused_scenarios if self.followers else {}
        return {"default": DEFAULT_SCENARIO, "scenarios": out, "refused": refused}

    def catalogue_view(self) -> dict[str, int]:
        cat = self.pipeline.catalogue
        return {"version": cat.version, "items": cat.tables.n_items, "blocked": cat.n_blocked}

    async def models_view(self) -> dict[str, Any]:
        """Every model's versions (state in Triton, quality), traffic split and shadow figures
        (summed over every replica of the service)."""
        shadow_sums = _shadow_sums(self.metrics_text().decode())
        out = []
        for name in self.registry.models():
            versions = []
            for v in self.registry.versions(name):
                try:
                    ready = bool(await self.client.model_ready(name, str(v)))
                except RankserveError:
                    ready = False
                meta = self.registry.meta(name, v)
                versions.append({"version": v, "state": "READY" if ready else "UNAVAILABLE",
                                 "created": meta.get("created"), "quality": meta.get("quality", {}),
                                 "backend": backend_of(self.registry.repo / name / str(v))})
            shadow = {f"v{v}": st.to_json() for (m, v), st in shadow_sums.items() if m == name}
            out.append({"name": name, "versions": versions, "traffic": self.registry.traffic(name).to_json(),
                        "shadow": shadow})
        index = self.pipeline.recall.index
        return {"models": out, "cross_backend": self.pipeline.crossing.backend,
                "faiss": {"kind": index.kind, "on_gpu": index.on_gpu}}
