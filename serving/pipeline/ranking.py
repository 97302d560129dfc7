"""Ranking stage: scores ranker inputs in Triton, split into calls of at most ``max_rows``.

Owns: turning ranker inputs into click probabilities. Must not touch: features, candidates, top-k.
"""

from __future__ import annotations

import asyncio

import numpy as np

from serving.errors import TritonError
from serving.pipeline.features import RANKER_OUTPUT, RankerInputs
from serving.triton.caller import ModelCaller

__all__ = ["RankingStage"]


class RankingStage:
    """Scores (user, item) rows with a ranking model in Triton.

    Args:
        caller: Triton model caller.
        max_rows: the model's ``max_batch_size``; larger inputs go out as several concurrent calls.
    """

    def __init__(self, caller: ModelCaller, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be an integer >= 1, got {max_rows}")
        self.caller = caller
        self.max_rows = max_rows

    async def score(self, model: str, version: int, inputs: RankerInputs, *, deadline: float) -> np.ndarray:
        """Click probabilities float32 [B] for the B rows of ``inputs``."""
        n = inputs.cat.shape[0]
        if n == 0:
            return np.empty(0, dtype=np.float32)
        bounds = [(s, min(s + self.max_rows, n)) for s in range(0, n, self.max_rows)]
        outs = await asyncio.gather(*(
            self.caller.infer(model, version, inputs.rows(slice(a, b)).tensors(), [RANKER_OUTPUT],
                              deadline=deadline)
            for a, b in bounds
        ))
        scores = np.concatenate([o[RANKER_OUTPUT].reshape(-1) for o in outs]).astype(np.float32, copy=False)
        if scores.shape[0] != n:
            raise TritonError(f"ranker returned {scores.shape[0]} scores for {n} rows")
        return scores
