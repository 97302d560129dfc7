"""Every metric and label the Grafana dashboard queries exists in a live scrape of the service's
GET /metrics (the session's server, after it has answered a request and taken an event for it)."""

from __future__ import annotations

import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_grafana import EXPRS, PANELS, queried_metrics

pytestmark = pytest.mark.integration

# Labels Prometheus adds when it scrapes (the target's), not the exposition's.
_TARGET_LABELS = {"job", "instance"}


def test_every_metric_the_dashboard_queries_is_in_a_live_scrape(rankserve_url: str) -> None:
    answer = httpx.post(f"{rankserve_url}/v1/rank", json={"user_id": 7, "k": 3}, timeout=30)
    assert answer.status_code == 200
    click = {"request_id": answer.json()["request_id"], "item_id": answer.json()["items"][0]["item_id"], "type": "click"}
    assert httpx.post(f"{rankserve_url}/v1/events", json={"events": [click]}, timeout=30).status_code == 202
    families = list(text_string_to_metric_families(httpx.get(f"{rankserve_url}/metrics", timeout=30).text))
    samples = {s.name for f in families for s in f.samples}
    declared = {f.name for f in families}
    labels = {k for f in families for s in f.samples for k in s.labels}
    missing = []
    for name in sorted(queried_metrics(EXPRS)):
        # shadow sums have samples only while a shadow version scores; the family is always declared
        if name not in samples and not (name.startswith("rankserve_shadow_") and name in declared):
            missing.append(name)
    assert missing == [], f"queried by deploy/grafana/rankserve.json, absent from /metrics: {missing}"
    used = {lab.strip() for e in EXPRS for group in re.findall(r"\bby \(([^)]*)\)", e) for lab in group.split(",")}
    used |= {lab for p in PANELS for t in p["targets"] for lab in re.findall(r"\{\{(\w+)\}\}", t["legendFormat"])}
    assert used - labels - _TARGET_LABELS == set(), used - labels
