"""Chooses one crossing backend at start-up (CuPy > Numba CUDA > Numba CPU > NumPy)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from kernels._numpy import cross_numpy
from kernels.spec import CrossInputs, CrossOutput, CrossSpec

__all__ = ["BACKENDS", "BackendUnavailableError", "Crosser", "available_backends", "get_crosser"]

log = logging.getLogger(__name__)

BACKENDS = ("cupy", "numba_cuda", "numba_cpu", "numpy")


class BackendUnavailableError(RuntimeError):
    """A crossing backend was asked for by name but cannot run here."""


@dataclass(frozen=True)
class Crosser:
    """A chosen backend. ``cross`` takes host (NumPy) inputs and returns host outputs."""

    backend: str
    cross: Callable[[CrossInputs, CrossSpec], CrossOutput]


def _load(name: str) -> Callable[[CrossInputs, CrossSpec], CrossOutput]:
    if name == "numpy":
        return cross_numpy
    raise BackendUnavailableError(f"crossing backend {name!r} is not implemented yet")


def available_backends() -> list[str]:
    out = []
    for name in BACKENDS:
        try:
            _load(name)
        except BackendUnavailableError:
            continue
        out.append(name)
    return out


def get_crosser(backend: str = "auto") -> Crosser:
    """Return the forced backend, or the fastest available one for ``"auto"``."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise BackendUnavailableError(f"unknown crossing backend {backend!r}; expected auto or one of {BACKENDS}")
        return Crosser(backend, _load(backend))
    for name in BACKENDS:
        try:
            fn = _load(name)
        except BackendUnavailableError:
            continue
        log.info("feature crossing backend: %s", name)
        return Crosser(name, fn)
    raise BackendUnavailableError("no crossing backend available")
