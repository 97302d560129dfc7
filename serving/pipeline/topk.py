"""Top-k selection: the ``k`` highest scores, highest first, ties broken by position.

Owns: ordering of an answer's items. Must not touch: anything else.
"""

from __future__ import annotations

import numpy as np

__all__ = ["top_k"]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` highest scores, highest first (stable on ties)."""
    n = scores.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.lexsort((np.arange(n), -scores))
