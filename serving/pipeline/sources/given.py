"""The ``given`` source: the caller's ``candidates``.

Owns: its spec (``exclusive``: when the request gives some, they are the only candidates;
``merge``: they join the other sources') and its lists (the given ids, ordered by popularity when
the ranker fails). Must not touch: filters, merging, other sources; whether a request may give
candidates (the pipeline checks it against the scenario).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from serving.pipeline.sources.base import Batch, Draw, Listed, SourceSpec, Truth

__all__ = ["Given", "GivenSource"]


class Given(SourceSpec):
    """The caller's ``candidates``. ``exclusive``: when the request gives some, they are the only
    candidates (the other sources do not run); ``merge``: they join the other sources'."""

    kind: Literal["given"]
    mode: Literal["exclusive", "merge"] = "exclusive"
    required: bool = Field(default=False, description="The request must give candidates.")

    def admits(self, truth: Truth) -> np.ndarray:
        """Nothing of its own: the caller's candidates say nothing of the scenario's rule."""
        return truth.nothing()


class GivenSource:
    """The caller's candidates of every request that gave some."""

    kind: ClassVar[str] = "given"
    spec: ClassVar[type[Given]] = Given

    async def draw(self, batch: Batch, draws: list[Draw[Given]]) -> None:
        for d in draws:
            if d.ask.given is not None:
                d.listed = Listed(batch.cat.tables.popularity[d.ask.given].astype(np.float32), d.ask.given, "given")
