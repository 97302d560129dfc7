"""Shadow scoring: a shadow version scores a share of the live traffic off the response path.

Owns: the comparison figures of a shadow version against the live one (rank correlation,
top-k overlap, mean score difference) and the background tasks that compute them.
Must not touch: the answers (a shadow never changes what a client gets).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from serving.errors import RankserveError
from serving.pipeline.features import RankerInputs
from serving.pipeline.topk import top_k

__all__ = ["ShadowScorer", "ShadowStats", "spearman"]

ScoreFn = Callable[[str, int, RankerInputs, float], Awaitable[np.ndarray]]


@dataclass
class ShadowStats:
    """How a shadow version's answers compare with the live version's, over shadowed requests."""

    requests: int = 0
    spearman_sum: float = 0.0
    overlap_sum: float = 0.0
    mean_abs_score_diff_sum: float = 0.0
    failures: int = 0

    def to_json(self) -> dict[str, float | int]:
        n = max(self.requests, 1)
        return {"requests": self.requests, "failures": self.failures,
                "rank_correlation": round(self.spearman_sum / n, 4), "overlap_at_k": round(self.overlap_sum / n, 4),
                "mean_abs_score_diff": round(self.mean_abs_score_diff_sum / n, 5)}

    def add(self, base: np.ndarray, shadow: np.ndarray, k: int) -> None:
        """Count one request's live and shadow scores of the same candidates."""
        if base.size < 2:
            return
        self.requests += 1
        self.spearman_sum += spearman(base, shadow)
        a, b = set(top_k(base, k).tolist()), set(top_k(shadow, k).tolist())
        self.overlap_sum += len(a & b) / max(len(a), 1)
        self.mean_abs_score_diff_sum += float(np.mean(np.abs(base - shadow)))


class ShadowScorer:
    """Runs shadow scoring in background tasks and keeps the figures per (model, version).

    Args:
        score: the ranking stage's scoring call ``(model, version, inputs, deadline) -> scores``.
    """

    def __init__(self, score: ScoreFn) -> None:
        self._score = score
        self.stats: dict[tuple[str, int], ShadowStats] = {}
        self._background: set[asyncio.Task[None]] = set()

    def submit(self, model: str, version: int, inputs: RankerInputs, live: list[tuple[np.ndarray, int]],
               deadline: float) -> None:
        """Score ``inputs`` (the rows of the shadowed requests, in order) with ``version`` and
        compare each request's part with its live scores and ``k`` in ``live``."""
        task = asyncio.get_running_loop().create_task(self._run(model, version, inputs, live, deadline))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run(self, model: str, version: int, inputs: RankerInputs, live: list[tuple[np.ndarray, int]],
                   deadline: float) -> None:
        stats = self.stats.setdefault((model, version), ShadowStats())
        try:
            flat = await self._score(model, version, inputs, deadline)
        except RankserveError:
            stats.failures += 1
            return
        lens = [p.shape[0] for p, _ in live]
        for (base, k), shadow in zip(live, np.split(flat, np.cumsum(lens)[:-1]), strict=True):
            stats.add(base, shadow, k)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors (1.0 when either is constant)."""
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else 1.0
