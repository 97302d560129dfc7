"""Prometheus metrics of one replica, their merge across every replica of the service, and
reading values back out of an exposition.

Owns: the metric names, their buckets and labels, :func:`merge_expositions`, which sums the
expositions of all replicas (counters, histograms, gauges; the largest value for the gauges
listed in ``MAX_GAUGES``) so that ``GET /metrics`` on any replica answers for the whole service,
and :func:`metric_values`, which reads samples of such a page by name (the drain, the load test
and the benchmarks read the service's figures through it). Must not touch: when they are counted (the service does that) or where snapshots are kept
(``serving.repository.nodes``).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["MAX_GAUGES", "NO_SCENARIO", "Metrics", "merge_expositions", "metric_values"]

# Gauges whose service-wide value is the largest of the replicas' (a version or a share, not an amount).
MAX_GAUGES = frozenset({"rankserve_model_version", "rankserve_model_traffic_percent", "rankserve_catalogue_version",
                        "rankserve_catalogue_items", "rankserve_catalogue_blocked_items",
                        "rankserve_scenario_version"})
# The ``scenario`` label of a request that named no served scenario (bad body, unknown name): client
# strings never become label values.
NO_SCENARIO = "none"

_LAT_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_ROW_BUCKETS = (100, 500, 1000, 2000, 4000, 8192, 16384, 32768)
_SCENARIO_BUCKETS = (1, 2, 3, 4, 8)


class Metrics:
    """Per-stage latency histograms, batch sizes, queue depth, degraded/shed counts, model versions
    and the traffic split, scenario versions; requests and their latency by scenario."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rankserve_requests", "Ranking requests by HTTP status, scenario and the answering "
                                "ranker's version ('' when refused before a version was chosen).",
                                ["status", "scenario", "version"], registry=r)
        self.latency_ms = Histogram(
            "rankserve_request_latency_ms", "End-to-end latency inside the replica, by scenario and ranker version.",
            ["scenario", "version"], buckets=_LAT_BUCKETS_MS, registry=r,
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
        self.batch_scenarios = Histogram(
            "rankserve_ranker_call_scenarios", "Scenarios whose requests one model version scored together in a "
            "batch (above 1: scenarios sharing a ranker batched together at Triton).", buckets=_SCENARIO_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("rankserve_queue_depth", "Requests admitted and not yet answered.", registry=r)
        self.degraded = Counter("rankserve_degraded", "Answers ranked without the ranking model.", registry=r)
        self.shed = Counter("rankserve_shed", "Requests refused with 503 by load shedding.", registry=r)
        self.model_version = Gauge(
            "rankserve_model_version", "Live version of each model.", ["model"], registry=r
        )
        self.scenario_version = Gauge("rankserve_scenario_version", "Live version of each scenario (0: built in).",
                                      ["scenario"], registry=r)
        self.catalogue_version = Gauge("rankserve_catalogue_version", "Catalogue change applied.", registry=r)
        self.catalogue_items = Gauge("rankserve_catalogue_items", "Items in the catalogue.", registry=r)
        self.catalogue_blocked = Gauge("rankserve_catalogue_blocked_items", "Items blocked (never returned).",
                                       registry=r)
        self.traffic_percent = Gauge(
            "rankserve_model_traffic_percent", "Share of requests each model version scores, by role: live, canary, "
            "shadow (a copy scored off the response path).", ["model", "version", "role"], registry=r
        )
        # the served log and events (serving.feedback)
        self.impressions = Counter("rankserve_impressions", "Items shown, by the ranker version that answered and "
                                   "its role (live, canary).", ["model", "version", "role"], registry=r)
        self.events = Counter("rankserve_events", "Events posted, by type and by the answer they follow (role "
                              "'unknown' with empty model and version: an answer this replica does not remember).",
                              ["type", "model", "version", "role"], registry=r)
        self.log_written = Counter("rankserve_log_written", "Rows written into the log, by stream (served, events).",
                                   ["stream"], registry=r)
        self.log_dropped = Counter("rankserve_log_dropped", "Rows not logged, by stream: a full buffer (an events "
                                   "call is then refused 503) or a failed write.", ["stream"], registry=r)
        self.replicas = Gauge("rankserve_replicas", "Replicas whose metrics this exposition sums.", registry=r)
        self.replicas.set(1)
        # shadow comparisons as sums (means = sum / requests), so that they add up across replicas
        shadow = ["model", "version"]
        self.shadow_requests = Gauge("rankserve_shadow_requests", "Requests scored by a shadow version.", shadow,
                                     registry=r)
        self.shadow_failures = Gauge("rankserve_shadow_failures", "Shadow scorings that failed.", shadow, registry=r)
        self.shadow_rank_corr = Gauge("rankserve_shadow_rank_correlation_sum",
                                      "Sum of shadow-vs-live Spearman correlations.", shadow, registry=r)
        self.shadow_overlap = Gauge("rankserve_shadow_overlap_at_k_sum", "Sum of shadow-vs-live top-k overlaps.",
                                    shadow, registry=r)
        self.shadow_abs_diff = Gauge("rankserve_shadow_abs_score_diff_sum",
                                     "Sum of mean absolute score differences, shadow vs live.", shadow, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join('{}="{}"'.format(k, v.replace("\\", "\\\\").replace('"', '\\"')) for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def merge_expositions(texts: Iterable[str]) -> str:
    """One exposition summing several (one per replica); creation timestamps are dropped."""
    families: dict[str, tuple[str, str]] = {}  # name -> (type, help)
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name.endswith("_created"):  # creation timestamps: no sum of them means anything
                continue
            families.setdefault(fam.name, (fam.type, fam.documentation))
            merged = values.setdefault(fam.name, {})
            for sample in fam.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if fam.name in MAX_GAUGES:
                    merged[key] = max(merged.get(key, float("-inf")), sample.value)
                else:
                    merged[key] = merged.get(key, 0.0) + sample.value
    lines = []
    for name, (kind, doc) in families.items():
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
        lines += [f"{sample}{_labels(dict(labels))} {value!r}" for (sample, labels), value in values[name].items()]
    return "\n".join(lines) + "\n"


def metric_values(text: str, names: tuple[str, ...] = ()) -> dict[str, float]:
    """Samples of a Prometheus text page by sample name (labels dropped: the last sample of a name
    wins), optionally only those in ``names``."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not names or sample.name in names:
                out[sample.name] = float(sample.value)
    return out
