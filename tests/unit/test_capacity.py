"""The capacity search and plan, on a synthetic unit whose latency grows with load (no server)."""

from __future__ import annotations

import math

import pytest

from benchmarks.capacity import Step, Target, markdown, plan_units, report, search_capacity


def _unit(limit_rps: float, base_ms: float = 20.0):  # noqa: ANN202
    """An M/M/1-like unit: p99 grows as the rate nears ``limit_rps``; beyond it, sheds 10%."""
    calls: list[float] = []

    def measure(rate: float) -> Step:
        calls.append(rate)
        if rate >= limit_rps:
            return Step(rate=rate, offered_rps=rate, requests=1000, failures=100, rps=limit_rps * 0.9, p50_ms=500, p95_ms=900,
                        p99_ms=math.inf)
        p99 = base_ms / (1 - rate / limit_rps)
        return Step(rate=rate, offered_rps=rate, requests=1000, failures=0, rps=rate, p50_ms=p99 / 3, p95_ms=p99 / 1.5, p99_ms=p99)

    return measure, calls


def test_search_brackets_the_rate_where_p99_meets_the_target() -> None:
    measure, calls = _unit(limit_rps=200.0)
    target = Target(p99_ms=100.0)  # met while 20 / (1 - r/200) <= 100, i.e. r <= 160
    capacity, steps = search_capacity(measure, target, start_rps=10, max_rps=10_000, growth=1.5, refine=5,
                                      confirm=False)
    assert capacity <= 160.0
    growth_fail = next(i for i, s in enumerate(steps) if s.verdict is not None)
    width = steps[growth_fail].rate - steps[growth_fail - 1].rate
    assert len(steps) == growth_fail + 1 + 5
    assert 160.0 - capacity <= width / 2**5, "five bisections narrow the bracket 32-fold"
    assert [s.rate for s in steps] == calls
    assert all((s.verdict is None) == (s.rate <= 160.0) for s in steps)
    assert any("p99" in (s.verdict or "") for s in steps)


def test_failures_fail_a_step_even_with_good_latency() -> None:
    target = Target(p99_ms=100.0, max_error_share=0.001)
    ok = Step(rate=50, offered_rps=50, requests=1000, failures=1, rps=50, p50_ms=5, p95_ms=8, p99_ms=10)
    bad = Step(rate=50, offered_rps=50, requests=1000, failures=2, rps=50, p50_ms=5, p95_ms=8, p99_ms=10)
    assert target.check(ok) is None
    assert "2 of 1000 failed" in (target.check(bad) or "")
    assert target.check(Step(rate=50, offered_rps=50, requests=0, failures=0, rps=0, p50_ms=0, p95_ms=0, p99_ms=0)) is not None


def test_a_unit_that_fails_at_the_start_rate_has_no_capacity() -> None:
    measure, calls = _unit(limit_rps=5.0)
    capacity, steps = search_capacity(measure, Target(p99_ms=100.0), start_rps=10, max_rps=100)
    assert capacity == 0.0
    assert calls == [10, 10]  # a failing rate is confirmed by a second step


def test_one_noisy_step_does_not_end_the_search() -> None:
    """A rate that fails once (a hiccup) and passes when measured again counts as passed."""
    measure, calls = _unit(limit_rps=200.0)
    hiccups = {45.0}

    def noisy(rate: float) -> Step:
        step = measure(rate)
        if rate in hiccups:
            hiccups.discard(rate)
            return Step(**{**step.__dict__, "p99_ms": 500.0, "verdict": None})
        return step

    capacity, steps = search_capacity(noisy, Target(p99_ms=100.0), start_rps=20, max_rps=1000, growth=1.5, refine=3)
    assert [s.rate for s in steps][:4] == [20, 30, 45, 45]
    assert steps[2].verdict is not None and steps[3].verdict is None
    assert 100 < capacity <= 160


def test_search_stops_at_max_rps_when_everything_passes() -> None:
    measure, calls = _unit(limit_rps=1e9)
    capacity, _ = search_capacity(measure, Target(p99_ms=100.0), start_rps=10, max_rps=40, growth=2)
    assert capacity == 40
    assert calls == [10, 20, 40]


@pytest.mark.parametrize(("capacity", "peak", "headroom", "units"),
                         [(100, 1000, 0.0, 10), (100, 1000, 0.3, 15), (150, 100, 0.3, 1), (99.9, 1000, 0.0, 11)])
def test_plan_units(capacity: float, peak: float, headroom: float, units: int) -> None:
    assert plan_units(capacity, peak, headroom) == units


def test_plan_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        plan_units(0, 100, 0.3)
    with pytest.raises(ValueError):
        plan_units(100, 100, 1.0)
    with pytest.raises(ValueError):
        search_capacity(lambda r: None, Target(p99_ms=1), start_rps=0, max_rps=1)  # type: ignore[arg-type,return-value]


def test_report_takes_the_offered_rate_of_the_best_passing_step() -> None:
    def measure(rate: float) -> Step:
        p99 = 50.0 if rate <= 20 else 500.0
        return Step(rate=rate, offered_rps=rate * 0.9, requests=100, failures=0, rps=rate * 0.9, p50_ms=10,
                    p95_ms=20, p99_ms=p99)

    rate, steps = search_capacity(measure, Target(p99_ms=100), start_rps=10, max_rps=100, growth=2, refine=0)
    rep = report(rate, steps, Target(p99_ms=100), unit="u", peak_rps=90, headroom=0.0, recall_n=500)
    assert rate == 20 and rep["capacity_rps"] == 18.0 and rep["units_for_peak"] == 5
    assert "Capacity: 18.0 req/s" in markdown(rep)


def test_report_when_nothing_met_the_target() -> None:
    measure, _ = _unit(limit_rps=5.0)
    rate, steps = search_capacity(measure, Target(p99_ms=100.0), start_rps=10, max_rps=100)
    rep = report(rate, steps, Target(p99_ms=100.0), unit="u", peak_rps=1000, headroom=0.3, recall_n=500)
    assert rep["capacity_rps"] == 0.0 and rep["units_for_peak"] is None
    assert "none measured" in markdown(rep)
