"""Prometheus metrics of one replica (served at ``GET /metrics``).

Owns: the metric names, their buckets and labels. Must not touch: when they are counted (the
service does that).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LAT_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_ROW_BUCKETS = (100, 500, 1000, 2000, 4000, 8192, 16384, 32768)


class Metrics:
    """Per-stage latency histograms, batch sizes, queue depth, degraded/shed counts, model versions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rankserve_requests", "Ranking requests by HTTP status.", ["status"], registry=r)
        self.latency_ms = Histogram(
            "rankserve_request_latency_ms", "End-to-end latency inside the replica.", buckets=_LAT_BUCKETS_MS,
            registry=r,
        )
        self.stage_ms = Histogram(
            "rankserve_stage_latency_ms", "Latency of one pipeline stage per batch.", ["stage"],
            buckets=_LAT_BUCKETS_MS, registry=r,
        )
        self.batch_requests = Histogram(
            "rankserve_batch_requests", "Requests per formed batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_rows = Histogram(
            "rankserve_batch_candidates", "Candidates scored per formed batch.", buckets=_ROW_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("rankserve_queue_depth", "Requests admitted and not yet answered.", registry=r)
        self.degraded = Counter("rankserve_degraded", "Answers ranked without the ranking model.", registry=r)
        self.shed = Counter("rankserve_shed", "Requests refused with 503 by load shedding.", registry=r)
        self.model_version = Gauge(
            "rankserve_model_version", "Live version of each model.", ["model"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
