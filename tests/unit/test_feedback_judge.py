"""The canary's judgement: the intervals against published and independent values, the verdict
(better, not better, not enough data) and ``decide`` over a log folder."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from serving.feedback.join import JOINED_SCHEMA
from serving.feedback.judge import _auc, auc_interval, decide, judge, two_proportion_z, wilson_interval
from tests.unit.log_files import Served, at, write_events, write_served


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (Wilson)
@pytest.mark.parametrize(("k", "n", "low", "high"), [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                                     (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_the_wilson_interval_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)


def test_the_auc_counts_every_positive_negative_pair_ties_a_half() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 200).astype(np.float64)  # many ties
    labels = (rng.random(200) < 0.3).astype(np.int8)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg)]
    assert _auc(scores, labels) == pytest.approx(np.mean(pairs))
    assert _auc(scores, np.zeros(200, np.int8)) is None


def test_the_hanley_mcneil_interval_agrees_with_a_bootstrap() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(2000) < 0.2).astype(np.int8)
    scores = rng.normal(size=2000) + labels * 0.8
    auc = _auc(scores, labels)
    assert auc is not None
    low, high = auc_interval(auc, int(labels.sum()), int((1 - labels).sum()))
    boot = []
    for _ in range(300):
        idx = rng.integers(0, 2000, 2000)
        boot.append(_auc(scores[idx], labels[idx]))
    assert (high - low) / 2 == pytest.approx(1.96 * np.std(boot), rel=0.2)
    assert low < auc < high


def test_the_two_proportion_z_against_a_hand_computed_case() -> None:
    z, p = two_proportion_z(60, 100, 40, 100)  # pooled 0.5: se = sqrt(0.25 * 0.02)
    assert z == pytest.approx(2.828427, abs=1e-6) and p == pytest.approx(0.002339, abs=1e-6)


def _impressions(arms: dict[tuple[str, int], tuple[int, int]], seed: int = 0) -> pa.Table:
    """Joined impressions of ``ranker``: (role, version) -> (impressions, clicks), one item per answer."""
    rng = np.random.default_rng(seed)
    rows = []
    for (role, version), (n, k) in arms.items():
        clicks = np.zeros(n, np.int8)
        clicks[:k] = 1
        for i in range(n):
            rows.append({"request_id": f"{role}{version}-{i}", "user_id": "u", "item_id": "i", "position": 0,
                         "score": float(rng.random() + clicks[i]), "click": int(clicks[i]), "cart": 0, "order": 0,
                         "model": "ranker", "model_version": version, "role": role, "scenario": "home",
                         "time": at(i)})
    return pa.Table.from_pylist(rows, schema=JOINED_SCHEMA)


def test_each_role_and_version_gets_its_figures() -> None:
    report = judge(_impressions({("live", 1): (1000, 50), ("canary", 2): (400, 40)}), "ranker")
    live, canary = report.live, report.canary
    assert live is not None and canary is not None
    assert (live.version, live.impressions, live.positives, live.requests) == (1, 1000, 50, 1000)
    assert live.ctr == 0.05 and (live.ctr_low, live.ctr_high) == wilson_interval(50, 1000)
    assert canary.auc == 1.0  # every clicked item scored above every other
    assert [a.role for a in report.arms] == ["live", "canary"]
    assert judge(_impressions({("live", 1): (10, 1)}), "other").arms == ()


def test_a_canary_clearly_better_is_promoted_and_one_alike_is_not() -> None:
    better, why = judge(_impressions({("live", 1): (5000, 250), ("canary", 2): (5000, 350)}),
                        "ranker").canary_better(1000)
    assert better and why.startswith("better at 95%") and "CTR 0.0700 on 5,000" in why
    alike, why = judge(_impressions({("live", 1): (5000, 250), ("canary", 2): (5000, 260)}),
                       "ranker").canary_better(1000)
    assert not alike and why.startswith("not better at 95%") and "z = 0.45" in why  # 0.002 / sqrt(0.051 * 0.949 * 2 / 5000)


def test_not_enough_data_says_how_many_of_how_many() -> None:
    ok, why = judge(_impressions({("live", 1): (5000, 250), ("canary", 2): (300, 100)}), "ranker").canary_better(1000)
    assert not ok and why == "not enough data: canary v2 has 300 of the 1,000 needed"


def test_without_a_canary_the_live_version_is_reported_alone() -> None:
    report = judge(_impressions({("live", 1): (100, 5)}), "ranker")
    assert report.canary is None and len(report.arms) == 1
    assert report.canary_better() == (False, "ranker has no canary in the served log")


def test_the_versions_compared_are_those_named_else_each_roles_latest() -> None:
    table = _impressions({("live", 1): (100, 5), ("live", 3): (50, 5), ("canary", 4): (50, 5)})
    assert judge(table, "ranker").live.version == 1  # type: ignore[union-attr]  # v1 answered last (t=99)
    assert judge(table, "ranker", live=3).live.version == 3  # type: ignore[union-attr]
    assert judge(table, "ranker", canary=9).canary is None


def test_decide_joins_the_log_and_judges(tmp_path: Path) -> None:
    live = [Served(f"l{i}", i, [("a", 0.5)]) for i in range(40)]
    canary = [Served(f"c{i}", i, [("a", 0.5)], role="canary", version=2) for i in range(40)]
    write_served(tmp_path, live + canary)
    write_events(tmp_path, [(f"c{i}", "a", "click", i + 1) for i in range(30)] +
                 [(f"l{i}", "a", "click", i + 1) for i in range(5)])
    decision = decide(tmp_path, None, "ranker", since=None, min_impressions=40)
    assert decision.promote and decision.report.canary.positives == 30  # type: ignore[union-attr]
    waiting = decide(tmp_path, None, "ranker", since=at(20), min_impressions=40)
    assert not waiting.promote and waiting.reason.startswith("not enough data")


def test_decide_on_a_log_with_nothing_served_is_not_to_promote(tmp_path: Path) -> None:
    decision = decide(tmp_path, None, "ranker", since=None, min_impressions=1)
    assert not decision.promote and decision.reason.startswith("not enough data: no served log under")
    assert decision.report.arms == ()
