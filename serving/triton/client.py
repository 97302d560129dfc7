"""The one module that talks to Triton over the network (``tritonclient`` gRPC).

Owns: inference, readiness and model loading calls, and turning Triton's exceptions into
rankserve's errors. Must not touch: deadlines and retries (``serving.triton.caller``), processes.

``TritonClient`` is synchronous (CLI, tests, push); ``AsyncTritonClient`` is used inside Serve
replicas' event loops. Triton's exceptions become :class:`serving.errors.TritonError`, a server
that cannot be reached becomes :class:`serving.errors.BackendUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from serving.errors import BackendUnavailableError, TritonError

__all__ = ["AsyncTritonClient", "TritonClient"]

_UNREACHABLE = ("StatusCode.UNAVAILABLE", "failed to connect", "Connection refused", "Socket closed")


def _wrap(err: InferenceServerException, what: str) -> Exception:
    text = str(err)
    if any(s in text for s in _UNREACHABLE):
        return BackendUnavailableError(f"Triton unreachable during {what}: {text}")
    return TritonError(f"Triton error during {what}: {text}")


def _inputs(mod: Any, inputs: Mapping[str, np.ndarray]) -> list[Any]:
    out = []
    for name, arr in inputs.items():
        arr = np.ascontiguousarray(arr)
        t = mod.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


class TritonClient:
    """Synchronous gRPC client for one Triton server (one channel, reused)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._c = grpcclient.InferenceServerClient(url)

    def close(self) -> None:
        self._c.close()

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *,
              version: str = "", timeout_s: float | None = None) -> dict[str, np.ndarray]:
        try:
            res = self._c.infer(model, _inputs(grpcclient, inputs), model_version=version,
                                outputs=[grpcclient.InferRequestedOutput(n) for n in output_names],
                                client_timeout=timeout_s)
        except InferenceServerException as err:
            raise _wrap(err, f"infer {model}") from err
        return {n: res.as_numpy(n) for n in output_names}

    def server_ready(self) -> bool:
        try:
            return bool(self._c.is_server_ready())
        except InferenceServerException as err:
            raise _wrap(err, "server_ready") from err

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            return bool(self._c.is_model_ready(name, version))
        except InferenceServerException as err:
            raise _wrap(err, f"model_ready {name}") from err

    def load_model(self, name: str) -> None:
        try:
            self._c.load_model(name)
        except InferenceServerException as err:
            raise _wrap(err, f"load {name}") from err


class AsyncTritonClient:
    """asyncio gRPC client (created lazily inside the running event loop)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._c: grpcaio.InferenceServerClient | None = None

    def _client(self) -> grpcaio.InferenceServerClient:
        if self._c is None:
            self._c = grpcaio.InferenceServerClient(self.url)
        return self._c

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *,
                    version: str = "", timeout_s: float | None = None) -> dict[str, np.ndarray]:
        try:
            res = await self._client().infer(
                model, _inputs(grpcaio, inputs), model_version=version,
                outputs=[grpcaio.InferRequestedOutput(n) for n in output_names], client_timeout=timeout_s)
        except InferenceServerException as err:
            raise _wrap(err, f"infer {model}") from err
        return {n: res.as_numpy(n) for n in output_names}

    async def server_ready(self) -> bool:
        try:
            return bool(await self._client().is_server_ready())
        except InferenceServerException as err:
            raise _wrap(err, "server_ready") from err

    async def model_ready(self, name: str, version: str = "") -> bool:
        try:
            return bool(await self._client().is_model_ready(name, version))
        except InferenceServerException as err:
            raise _wrap(err, f"model_ready {name}") from err
