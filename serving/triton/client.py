"""The one module that talks to Triton over the network (``tritonclient`` gRPC).

Owns: inference, readiness and model loading calls, and turning Triton's exceptions into
rankserve's errors. Must not touch: deadlines and retries (``serving.triton.caller``), processes.

``TritonClient`` is synchronous (CLI, tests, push); ``AsyncTritonClient`` is used inside Serve
replicas' event loops. Triton's exceptions become :class:`serving.errors.TritonError`, a server
that cannot be reached becomes :class:`serving.errors.BackendUnavailableError`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from serving.errors import BackendUnavailableError, TritonError
from serving.net import is_loopback
from serving.triton.shm import ShmPool, ShmRegion

__all__ = ["KEY_HEADER", "AsyncTritonClient", "TritonClient", "TritonEndpoint"]

log = logging.getLogger(__name__)

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


# The header that Triton's restricted protocols (model repository, shared memory) want, with the
# key of the Triton (``serving.triton.process``): other processes that reach Triton's ports cannot
# load a model into it or map its memory.
KEY_HEADER = "rankserve-triton-key"
_GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton's gRPC server reads restricted-protocol headers under it


def _key_headers(key: str | None) -> dict[str, str] | None:
    return {_GRPC_HEADER_PREFIX + KEY_HEADER: key} if key else None


@dataclass(frozen=True)
class TritonEndpoint:
    """Where a Triton listens (gRPC ``host:port``) and its restricted-protocol key (None: none asked)."""

    url: str
    key: str | None = None

    def client(self) -> TritonClient:
        return TritonClient(self.url, self.key)


class TritonClient:
    """Synchronous gRPC client for one Triton server (one channel, reused). ``key``: the Triton's
    restricted-protocol key, sent with model loads."""

    def __init__(self, url: str, key: str | None = None) -> None:
        self.url = url
        self._headers = _key_headers(key)
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

    def server_live(self, timeout_s: float = 2.0) -> bool:
        """Liveness: the server answers (it stays live while models load, unlike readiness)."""
        try:
            return bool(self._c.is_server_live(client_timeout=timeout_s))
        except InferenceServerException as err:
            raise _wrap(err, "server_live") from err

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            return bool(self._c.is_model_ready(name, version))
        except InferenceServerException as err:
            raise _wrap(err, f"model_ready {name}") from err

    def ready_versions(self, name: str) -> tuple[int, ...]:
        """The versions of ``name`` Triton holds ready (its repository index)."""
        try:
            index = self._c.get_model_repository_index(headers=self._headers, as_json=True)
        except InferenceServerException as err:
            raise _wrap(err, "repository index") from err
        return tuple(sorted(int(m["version"]) for m in index.get("models", [])
                            if m.get("name") == name and m.get("state") == "READY" and m.get("version")))

    def load_model(self, name: str, config: str | None = None) -> None:
        """Load ``name`` (explicit model control); ``config``: the model's config as JSON, used
        instead of its ``config.pbtxt`` (which versions to load, among others)."""
        try:
            self._c.load_model(name, headers=self._headers, config=config)
        except InferenceServerException as err:
            raise _wrap(err, f"load {name}") from err


class AsyncTritonClient:
    """asyncio gRPC client (created lazily inside the running event loop).

    Args:
        url: Triton's gRPC ``host:port``.
        shared_memory: send inputs of ``shm_min_bytes`` or more through system shared memory
            (Triton on the same host); if Triton cannot register a region, plain gRPC is used.
    """

    @classmethod
    def for_url(cls, url: str, shared_memory: str = "auto", key: str | None = None) -> AsyncTritonClient:
        """A client of ``url``; shared memory ``on``, ``off``, or ``auto`` (on when Triton is on loopback)."""
        return cls(url, shared_memory=shared_memory == "on" or (shared_memory == "auto" and is_loopback(f"grpc://{url}")),
                   key=key)

    def __init__(self, url: str, *, shared_memory: bool = False, shm_min_bytes: int = 256 * 1024,
                 key: str | None = None) -> None:
        self.url = url
        self._headers = _key_headers(key)
        self._c: grpcaio.InferenceServerClient | None = None
        self._pool = ShmPool() if shared_memory else None
        self._shm_min_bytes = shm_min_bytes

    def _client(self) -> grpcaio.InferenceServerClient:
        if self._c is None:
            self._c = grpcaio.InferenceServerClient(self.url)
        return self._c

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *,
                    version: str = "", timeout_s: float | None = None) -> dict[str, np.ndarray]:
        outputs = [grpcaio.InferRequestedOutput(n) for n in output_names]
        try:
            if self._pool is not None and sum(a.nbytes for a in inputs.values()) >= self._shm_min_bytes:
                res = await self._infer_shm(self._pool, model, inputs, outputs, version, timeout_s)
            else:
                res = await self._client().infer(model, _inputs(grpcaio, inputs), model_version=version,
                                                 outputs=outputs, client_timeout=timeout_s)
        except InferenceServerException as err:
            raise _wrap(err, f"infer {model}") from err
        return {n: res.as_numpy(n) for n in output_names}

    async def _infer_shm(self, pool: ShmPool, model: str, inputs: Mapping[str, np.ndarray], outputs: list[Any],
                         version: str, timeout_s: float | None) -> Any:
        arrays = [np.ascontiguousarray(a) for a in inputs.values()]
        region, new = pool.acquire(sum(a.nbytes for a in arrays))
        try:
            if new and not await self._register(region):
                return await self._client().infer(model, _inputs(grpcaio, inputs), model_version=version,
                                                  outputs=outputs, client_timeout=timeout_s)
            tensors = []
            for (name, a), (offset, nbytes) in zip(inputs.items(), region.write(arrays), strict=True):
                t = grpcaio.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
                t.set_shared_memory(region.name, nbytes, offset=offset)
                tensors.append(t)
            try:
                return await self._client().infer(model, tensors, model_version=version, outputs=outputs,
                                                  client_timeout=timeout_s)
            except InferenceServerException as err:
                # a restarted Triton has forgotten the region: register it again, once
                if "shared memory" not in str(err) or not await self._register(region):
                    raise
            return await self._client().infer(model, tensors, model_version=version, outputs=outputs,
                                              client_timeout=timeout_s)
        finally:
            pool.release(region)

    async def _register(self, region: ShmRegion) -> bool:
        """Register ``region`` with Triton; on refusal, stop using shared memory."""
        c = self._client()
        try:
            with contextlib.suppress(InferenceServerException):
                await c.unregister_system_shared_memory(region.name, headers=self._headers)
            await c.register_system_shared_memory(region.name, region.key, region.size, headers=self._headers)
            return True
        except InferenceServerException as err:
            log.warning("Triton at %s cannot use shared memory (%s); sending inputs over gRPC", self.url, err)
            if self._pool is not None:
                self._pool.close()
            self._pool = None
            return False

    async def close(self) -> None:
        """Unregister and remove the shared memory regions, close the channel."""
        if self._pool is not None:
            for region in self._pool.regions:
                with contextlib.suppress(InferenceServerException):
                    await self._client().unregister_system_shared_memory(region.name, headers=self._headers)
            self._pool.close()
        if self._c is not None:
            await self._c.close()
            self._c = None

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
