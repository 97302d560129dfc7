"""The loop bench's figures from made-up runs: recovery, click to serving model, loss per step, the plot."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.loop import Plan, click_to_serving, loss, recovery, recovery_met, report


def _sim(ctrs: list[float], bucket_s: float = 30.0, first: dict[str, float] | None = None) -> dict[str, Any]:
    counts = {"requests_sent": 100, "answered": 100, "impressions": 1000, "clicks": 40, "events_posted": 40,
              "events_accepted": 40}
    return {"buckets": [{"t_s": i * bucket_s, "ctr": c} for i, c in enumerate(ctrs)], "counts": counts,
            "first_answer": first or {}, "by_model": {}, "started": 1000.0}


def test_recovery_is_the_share_of_the_lost_ctr_won_back_and_when_half_was() -> None:
    static = _sim([0.06, 0.06, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04])
    learned = _sim([0.06, 0.06, 0.04, 0.045, 0.052, 0.055, 0.055, 0.055])
    r = recovery(static, learned, drift_at_s=60, bucket_s=30)
    assert r["ctr_before_drift"] == 0.06 and r["ctr_after_drift_static"] == 0.04
    assert r["recovered_share"] == 0.713  # the last 2 minutes (0.052, then 0.055 three times) of the 0.02 lost
    assert r["half_recovered_after_s"] == 90.0  # the bucket from 120 s (0.052) ends 90 s after the drift
    none = recovery(static, _sim([0.06, 0.06, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04]), drift_at_s=60, bucket_s=30)
    assert none["recovered_share"] == 0.0 and none["half_recovered_after_s"] is None
    partial = recovery(static, _sim([0.06, 0.06, 0.04, 0.045, 0.052, 0.055, 0.055, 0.055, 0.01]), drift_at_s=60,
                       bucket_s=30, duration_s=240)
    assert partial["recovered_share"] == 0.713  # the last bucket ends after the run: left out
    assert recovery_met(r) and not recovery_met({**r, "recovered_share": 0.4})
    assert not recovery_met({**r, "half_recovered_after_s": 700.0})


def _at(s: float) -> str:
    return datetime.fromtimestamp(s, timezone.utc).isoformat()


def test_click_to_serving_runs_from_the_events_a_version_learned_to_its_first_answer() -> None:
    lines = [{"iteration": 0, "step": "join", "ok": True, "since": _at(940), "until": _at(1000)},
             {"iteration": 0, "step": "push", "ok": True, "version": 2},
             {"iteration": 1, "step": "join", "ok": True, "since": _at(1000), "until": _at(1060)},
             {"iteration": 1, "step": "push", "ok": False},
             {"iteration": 2, "step": "join", "ok": True, "since": _at(1060), "until": _at(1120)},
             {"iteration": 2, "step": "push", "ok": True, "version": 3}]
    c = click_to_serving(lines, {"ranker v2": 1030.0, "ranker v3": 1150.0})
    assert c["versions"] == [{"version": 2, "newest_event_s": 30.0, "oldest_event_s": 90.0},
                             {"version": 3, "newest_event_s": 30.0, "oldest_event_s": 90.0}]
    assert c["worst_s"] == 90.0 and c["best_s"] == 30.0


def test_loss_counts_every_step_from_requests_sent_to_rows_joined() -> None:
    run = {"sim": _sim([0.04]), "join": {"served": 99, "impressions": 990, "events": 40, "clicks_joined": 40}}
    out = loss(run)
    assert out["lost"]["answered->served_records"] == 1 and out["lost"]["impressions_shown->impressions_joined"] == 10
    assert out["lost"]["events_accepted->events_logged"] == 0 and out["total_lost"] == 11


def test_the_report_sets_each_figure_beside_its_target_and_draws_its_plot(tmp_path: Path) -> None:
    from benchmarks.plots import plot_loop

    plan = Plan(duration_s=240, drift_at_s=60, rate=10, every_s=60, window_s=60, min_impressions=100, bucket_s=30,
                throughput_s=5)
    promote = {"iteration": 0, "step": "promote", "ok": True, "time": _at(1100)}
    runs = {"static": {"sim": _sim([0.06, 0.06, 0.04, 0.04]), "learn": [], "join": {}},
            "learn": {"sim": _sim([0.06, 0.06, 0.05, 0.06]), "learn": [promote], "join": {}}}
    rep = report(plan, runs, {"log_on": {"rps": 97.0}, "log_off": {"rps": 100.0}, "cost": 0.03})
    assert rep["logging_cost"]["met"] and rep["logging_cost"]["target"] == 0.05
    assert rep["recovery"]["met"] and rep["click_to_serving"]["met"] is False  # nothing was pushed
    plot_loop(rep, tmp_path / "loop.png")
    assert (tmp_path / "loop.png").stat().st_size > 1000
