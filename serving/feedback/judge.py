"""The canary judged by outcome: CTR and AUC per role and version, and whether the canary beats live.

Owns: the figures of each (role, version) of a ranker in joined impressions (:func:`judge`):
impressions, requests, positives (clicks by default), CTR with its 95% Wilson interval, the AUC of
the score against the label among shown items with its 95% Hanley-McNeil interval; the verdict
(:meth:`Report.canary_better`: a one-sided two-proportion z-test on CTR, pooled, at 95%); and
:func:`decide`, the join and the verdict in one call for the ``learn`` loop. Must not touch:
traffic (``rankserve promote`` acts on the verdict), the log's files.

The intervals treat impressions as independent; several items of one answer are not quite, so
the intervals are somewhat narrow when answers show many items to the same user.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from serving.data.schema import Schema
from serving.errors import SchemaError
from serving.feedback.join import DEFAULT_ATTRIBUTION_WINDOW_S, EVENT_TYPES, IdTypes, JoinCounts, join_logs

__all__ = ["Z_95", "Z_95_ONE_SIDED", "Arm", "Decision", "Report", "auc_interval", "decide", "judge",
           "two_proportion_z", "wilson_interval"]

Z_95 = 1.959963984540054  # two-sided 95%
Z_95_ONE_SIDED = 1.6448536269514722
DEFAULT_MIN_IMPRESSIONS = 1000


def wilson_interval(positives: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``(0, 1)`` when ``n`` is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = positives / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """The Mann-Whitney AUC (ties count a half); None without both a positive and a negative."""
    pos = int(labels.sum())
    neg = labels.shape[0] - pos
    if pos == 0 or neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranks = (first + (counts + 1) / 2.0)[inverse]  # 1-based average ranks
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def auc_interval(auc: float, positives: int, negatives: int, z: float = Z_95) -> tuple[float, float]:
    """The Hanley-McNeil (1982) interval of an AUC over ``positives`` and ``negatives``, clipped to [0, 1]."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) \
        / (positives * negatives)
    half = z * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


@dataclass(frozen=True)
class Arm:
    """One (role, version) of a ranker: what it was shown on and how users answered."""

    role: str
    version: int
    requests: int
    impressions: int
    positives: int
    ctr: float
    ctr_low: float
    ctr_high: float
    auc: float | None
    auc_low: float | None
    auc_high: float | None

    def line(self, event: str) -> str:
        auc = "AUC n/a (needs a shown item with and one without a " + event + ")" if self.auc is None else (
            f"AUC {self.auc:.4f} [{self.auc_low:.4f}, {self.auc_high:.4f}]")
        return (f"{self.role:<7} v{self.version:<4} {self.impressions:>10,} impressions ({self.requests:,} answers) "
                f"{self.positives:>8,} {event}s  CTR {self.ctr:.4f} [{self.ctr_low:.4f}, {self.ctr_high:.4f}]  {auc}")


def _arm(role: str, version: int, rows: pa.Table, event: str) -> Arm:
    labels = rows.column(event).to_numpy().astype(np.int8)
    scores = rows.column("score").to_numpy().astype(np.float64)
    n, k = labels.shape[0], int(labels.sum())
    low, high = wilson_interval(k, n)
    auc = _auc(scores, labels)
    auc_low, auc_high = auc_interval(auc, k, n - k) if auc is not None else (None, None)
    return Arm(role, version, len(pc.unique(rows.column("request_id"))), n, k, k / n if n else 0.0, low, high,
               auc, auc_low, auc_high)


@dataclass(frozen=True)
class Report:
    """Every (role, version) of one ranker in a join; ``live`` and ``canary`` name the two compared."""

    model: str
    event: str
    arms: tuple[Arm, ...]
    live: Arm | None
    canary: Arm | None
    counts: JoinCounts | None = None

    def canary_better(self, min_impressions: int = DEFAULT_MIN_IMPRESSIONS) -> tuple[bool, str]:
        """Whether the canary's CTR beats live's at 95% (one-sided pooled two-proportion z-test), and why."""
        live, canary = self.live, self.canary
        if canary is None:
            return False, f"{self.model} has no canary in the served log"
        if live is None:
            return False, f"{self.model} has no live version in the served log to compare the canary with"
        short = [f"{a.role} v{a.version} has {a.impressions:,} of the {min_impressions:,} needed"
                 for a in (canary, live) if a.impressions < min_impressions]
        if short:
            return False, "not enough data: " + "; ".join(short)
        z, p_value = two_proportion_z(canary.positives, canary.impressions, live.positives, live.impressions)
        figures = (f"canary v{canary.version} CTR {canary.ctr:.4f} on {canary.impressions:,} vs live v{live.version} "
                   f"CTR {live.ctr:.4f} on {live.impressions:,}: z = {z:.2f}, one-sided p = {p_value:.3g}")
        if z > Z_95_ONE_SIDED:
            return True, f"better at 95%: {figures}"
        return False, f"not better at 95%: {figures}"

    def lines(self) -> list[str]:
        if not self.arms:
            return [f"{self.model}: no impression in the served log"]
        return [f"{self.model} ({self.event}):", *(f"  {a.line(self.event)}" for a in self.arms)]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "event": self.event, "arms": [asdict(a) for a in self.arms],
                "live": None if self.live is None else self.live.version,
                "canary": None if self.canary is None else self.canary.version,
                "counts": None if self.counts is None else self.counts.to_json()}


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """z of ``k1/n1 - k2/n2`` under the pooled null, and its one-sided p-value (``p1 > p2``)."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0 if k1 / n1 <= k2 / n2 else 0.0
    z = (k1 / n1 - k2 / n2) / se
    return z, 0.5 * math.erfc(z / math.sqrt(2))


def judge(table: pa.Table, model: str, *, event: str = "click", live: int | None = None,
          canary: int | None = None, counts: JoinCounts | None = None) -> Report:
    """The figures of ``model`` in joined impressions, per (role, version).

    Args:
        table: joined impressions (``serving.feedback.join``).
        event: the label judged: click, cart or order.
        live, canary: the versions to compare (None: each role's version served last).
    """
    if event not in EVENT_TYPES:
        raise ValueError(f"event must be one of {EVENT_TYPES}, got {event!r}")
    rows = table.filter(pc.equal(table.column("model"), model))
    arms = []
    for key in rows.select(["role", "model_version"]).group_by(["role", "model_version"]).aggregate([]).to_pylist():
        mask = pc.and_(pc.equal(rows.column("role"), key["role"]),
                       pc.equal(rows.column("model_version"), key["model_version"]))
        arms.append(_arm(key["role"], int(key["model_version"]), rows.filter(mask), event))
    arms.sort(key=lambda a: (a.role != "live", a.role, a.version))
    return Report(model, event, tuple(arms), _pick(rows, arms, "live", live), _pick(rows, arms, "canary", canary),
                  counts)


def _pick(rows: pa.Table, arms: list[Arm], role: str, version: int | None) -> Arm | None:
    of_role = [a for a in arms if a.role == role]
    if version is None and of_role:
        last = rows.filter(pc.equal(rows.column("role"), role))
        version = int(last.column("model_version")[int(pc.index(last.column("time"),
                                                                pc.max(last.column("time"))).as_py())].as_py())
    return next((a for a in of_role if a.version == version), None)


@dataclass(frozen=True)
class Decision:
    """Whether to promote the canary, why, and the report it rests on."""

    promote: bool
    reason: str
    report: Report


def decide(log_root: Path, schema: Schema | IdTypes | None, model: str, *, since: datetime | None = None,
           min_impressions: int = DEFAULT_MIN_IMPRESSIONS, live: int | None = None, canary: int | None = None,
           attribution_window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S) -> Decision:
    """Join ``log_root`` from ``since`` and judge ``model``'s canary against live (see
    :meth:`Report.canary_better`). A log that cannot be joined (nothing served yet, every file
    damaged) is a decision not to promote, saying why: the loop keeps the live model serving."""
    try:
        joined = join_logs(log_root, schema, since, attribution_window_s=attribution_window_s)
    except SchemaError as err:
        return Decision(False, f"not enough data: {err.message}", Report(model, "click", (), None, None))
    report = judge(joined.table, model, live=live, canary=canary, counts=joined.counts)
    promote, reason = report.canary_better(min_impressions)
    return Decision(promote, reason, report)
