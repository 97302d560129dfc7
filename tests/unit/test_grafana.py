"""The Grafana dashboard (deploy/grafana/rankserve.json) is well formed: panels laid out on the
24-column grid without overlap, every query valid PromQL on the Prometheus data source the user
picks, and every metric it queries one that serving/metrics.py defines (the live check against a
scrape of the running service is tests/integration/test_dashboard.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import pytest

from serving.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "rankserve.json").read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
EXPRS = [t["expr"] for p in PANELS for t in p["targets"]]
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def queried_metrics(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in re.findall(r"\b(rankserve_\w+)\s*\{", e)}


def test_panels_are_laid_out_on_the_grid_without_overlap() -> None:
    assert DASHBOARD["uid"] == "rankserve" and len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
    cells: dict[tuple[int, int], int] = {}
    for p in DASHBOARD["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]


def test_every_panel_queries_the_chosen_prometheus() -> None:
    assert DASHBOARD["templating"]["list"][0] == {**DASHBOARD["templating"]["list"][0], "name": "datasource",
                                                  "type": "datasource", "query": "prometheus"}
    for p in PANELS:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])


@pytest.mark.parametrize("expr", EXPRS)
def test_every_query_is_valid_promql(expr: str) -> None:
    promql_parser.parse(expr.replace("$__rate_interval", "5m").replace("$job", ".*"))
    assert '{job=~"$job"}' in expr  # follows the job chosen at the top


def test_every_queried_metric_is_one_rankserve_defines() -> None:
    defined = {fam.name + suffix for fam in Metrics().registry.collect() for suffix in _SUFFIXES[fam.type]}
    queried = queried_metrics(EXPRS)
    assert queried - defined == set()
    # the list: request rate by status, p50/p99, stages, batches, queue, shed, degraded, versions
    for name in ("rankserve_requests_total", "rankserve_request_latency_ms_bucket", "rankserve_stage_latency_ms_bucket",
                 "rankserve_batch_requests_bucket", "rankserve_batch_candidates_sum", "rankserve_queue_depth",
                 "rankserve_shed_total", "rankserve_degraded_total", "rankserve_model_version",
                 "rankserve_model_traffic_percent", "rankserve_replicas"):
        assert name in queried, name


def test_queries_of_per_scenario_metrics_sum_the_scenarios_rather_than_take_the_largest() -> None:
    """``rankserve_requests_total`` and ``rankserve_request_latency_ms`` are per scenario and per
    ranker version: the dashboard takes the max across scrapes (each sums every replica) by
    ``scenario`` and ``version`` (or sums the versions away first), then sums them, so a total is not
    the busiest scenario's or version's alone. The scenarios have their own panels."""
    labelled = {"rankserve_requests_total", "rankserve_request_latency_ms_bucket"}
    for expr in EXPRS:
        if queried_metrics([expr]) & labelled:
            assert re.search(r"\bmax by \([^)]*\bscenario\b[^)]*\)", expr), expr
            assert re.search(r"\bmax by \([^)]*\bversion\b[^)]*\)|sum without \([^)]*\bversion\b", expr), expr
    queried = queried_metrics(EXPRS)
    assert "rankserve_scenario_version" in queried
    assert any("{{scenario}}" in t["legendFormat"] for p in PANELS for t in p["targets"])
