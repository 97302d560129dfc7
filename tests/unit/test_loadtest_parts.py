"""The load test's pure parts: schedules, loopback guard, metrics parsing (no locust import)."""

from __future__ import annotations

import sys

from loadtest.run import _batch_series, parse_batch_metrics
from loadtest.schedule import constant, spike, step_ramp
from serving.net import is_loopback


def test_step_ramp_climbs_and_stops() -> None:
    users = [step_ramp(t, duration_s=70)[0] for t in range(0, 70, 10)]  # type: ignore[index]
    assert users == [1, 2, 4, 8, 16, 32, 64]
    assert step_ramp(70, duration_s=70) is None


def test_spike_jumps_in_the_middle_fifth() -> None:
    assert spike(10, duration_s=100) == (4, 4.0)
    assert spike(50, duration_s=100) == (64, 64.0)
    assert spike(70, duration_s=100) == (4, 4.0)
    assert spike(100, duration_s=100) is None
    assert constant(3, duration_s=5, users=6) == (6, 6.0) and constant(5, duration_s=5) is None


def test_only_loopback_targets() -> None:
    assert is_loopback("http://127.0.0.1:8000") and is_loopback("http://localhost:8000")
    assert is_loopback("http://[::1]:8000")
    for url in ("http://10.0.0.1:8000", "http://192.168.1.2", "http://example.com"):
        assert not is_loopback(url)


def test_metrics_parsing_and_batch_series() -> None:
    text = """# HELP rankserve_batch_requests Requests per formed batch.
rankserve_batch_requests_bucket{le="1.0"} 3.0
rankserve_batch_requests_sum 30.0
rankserve_batch_requests_count 10.0
rankserve_batch_candidates_sum 15000.0
rankserve_queue_depth 2.0
"""
    m = parse_batch_metrics(text)
    assert m == {"rankserve_batch_requests_sum": 30.0, "rankserve_batch_requests_count": 10.0,
                 "rankserve_batch_candidates_sum": 15000.0, "rankserve_queue_depth": 2.0}
    later = {"t": 2.0, "rankserve_batch_requests_sum": 70.0, "rankserve_batch_requests_count": 20.0,
             "rankserve_batch_candidates_sum": 35000.0}
    assert _batch_series([{"t": 1.0, **m}, later]) == [(2.0, 4.0, 2000.0)]


def test_locust_is_not_imported_by_these_parts() -> None:
    assert "locust" not in sys.modules


def _answer(ids: list[int], scores: list[float] | None = None, **extra: object) -> dict:
    scores = scores if scores is not None else [1.0 - 0.01 * i for i in range(len(ids))]
    return {"request_id": "r", "items": [{"item_id": i, "score": s} for i, s in zip(ids, scores, strict=True)],
            **extra}


def test_answer_checks_accept_a_correct_answer_and_name_each_breach() -> None:
    from loadtest.checks import check_answer, expected_items

    recall = {"user_id": 1, "k": 3, "request_id": "r", "exclude": [9]}
    given = {"user_id": 1, "k": 5, "request_id": "r", "candidates": [4, 5, 6, 6], "exclude": [6]}
    assert expected_items(recall) == 3 and expected_items(given) == 2
    assert check_answer(recall, 200, _answer([1, 2, 3]), 100) is None
    assert check_answer(given, 200, _answer([5, 4]), 100) is None
    breaches = {
        "status 503": check_answer(recall, 503, "busy", 100),
        "status UNAVAILABLE": check_answer(recall, "UNAVAILABLE", "down", 100),
        "not echoed": check_answer(recall, 200, {**_answer([1, 2, 3]), "request_id": "x"}, 100),
        "duplicate": check_answer(recall, 200, _answer([1, 1, 3]), 100),
        "catalogue": check_answer(recall, 200, _answer([1, 2, 100]), 100),
        "NaN": check_answer(recall, 200, _answer([1, 2, 3], [0.9, float("nan"), 0.1]), 100),
        "outside [0, 1]": check_answer(recall, 200, _answer([1, 2, 3], [1.5, 0.2, 0.1]), 100),
        "sorted": check_answer(recall, 200, _answer([1, 2, 3], [0.1, 0.2, 0.3]), 100),
        "excluded": check_answer(recall, 200, _answer([1, 2, 9]), 100),
        "outside the given": check_answer(given, 200, _answer([5, 7]), 100),
        "more than k": check_answer(recall, 200, _answer([1, 2, 3, 4]), 100),
        "expected 3": check_answer(recall, 200, _answer([1, 2]), 100),
        "integer item_id": check_answer(recall, 200, {"request_id": "r", "items": [{"id": 1}]}, 100),
    }
    for words, reason in breaches.items():
        assert reason is not None and words in reason, (words, reason)
    # degraded answers carry recall scores (any real number), still sorted and finite
    assert check_answer(recall, 200, _answer([1, 2, 3], [7.0, 2.0, -1.0], degraded=True), 100) is None
