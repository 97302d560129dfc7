"""One Triton model call with a deadline and a bounded retry (shared by recall and ranking).

Owns: the retry policy and the per-attempt timeout. Must not touch: tensors' meaning, degrading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from serving.errors import BackendUnavailableError, DeadlineExceededError, TritonError

__all__ = ["AsyncInferClient", "ModelCaller"]

log = logging.getLogger(__name__)


class AsyncInferClient(Protocol):
    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        *,
        version: str = "",
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]: ...

    async def close(self) -> None: ...


class ModelCaller:
    """Calls one Triton model, retrying a failed call ``retries`` times within the deadline.

    Args:
        client: an async Triton client (``serving.triton.client.AsyncTritonClient``).
        timeout_s: timeout of one attempt (capped by the remaining deadline).
        retries: extra attempts after a failure.
    """

    def __init__(self, client: AsyncInferClient, *, timeout_s: float, retries: int) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._retries = retries

    async def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        *,
        deadline: float,
    ) -> dict[str, np.ndarray]:
        """Infer, retrying once on a Triton or connection error.

        Args:
            deadline: absolute ``time.monotonic()`` by which the answer is needed.

        Raises:
            DeadlineExceededError: no time left for an attempt.
            TritonError | BackendUnavailableError: the last attempt's failure.
        """
        last: Exception | None = None
        for attempt in range(self._retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError(f"deadline passed before {model} answered") from last
            try:
                return await asyncio.wait_for(
                    self._client.infer(model, inputs, output_names, version=str(version),
                                       timeout_s=min(left, self._timeout_s)),
                    timeout=min(left, self._timeout_s) + 0.05,
                )
            except (TritonError, BackendUnavailableError, asyncio.TimeoutError) as err:
                last = err
                log.warning("triton call to %s v%s failed (attempt %d): %s", model, version, attempt + 1, err)
        if isinstance(last, asyncio.TimeoutError):
            raise TritonError(f"{model} v{version} timed out") from last
        assert last is not None
        raise last
