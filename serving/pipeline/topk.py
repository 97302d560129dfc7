"""Top-k selection: the ``k`` highest scores, highest first, ties broken by position; optionally
with at most ``max_per_group`` items of one group (a scenario's diversity rule).

Owns: ordering of an answer's items. Must not touch: anything else.
"""

from __future__ import annotations

import numpy as np

__all__ = ["diverse_top_k", "top_k"]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` highest scores, highest first (stable on ties)."""
    n = scores.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.lexsort((np.arange(n), -scores))


def diverse_top_k(scores: np.ndarray, k: int, groups: np.ndarray, max_per_group: int) -> np.ndarray:
    """Like :func:`top_k`, but an item whose group already has ``max_per_group`` items is passed
    over for the next best; fewer than ``k`` when the candidates' groups cannot fill it."""
    order = top_k(scores, scores.shape[0])
    if order.size == 0:
        return order
    g = np.asarray(groups)[order]
    # the rank of each item within its group, in score order: keep those below the cap
    by_group = np.lexsort((np.arange(order.size), g))
    starts = np.r_[0, np.flatnonzero(np.diff(g[by_group])) + 1]
    within = np.empty(order.size, dtype=np.int64)
    within[by_group] = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
    return order[within < max_per_group][:k]
