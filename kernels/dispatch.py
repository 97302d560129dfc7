"""Chooses one assembly (and crossing) backend at start-up: CuPy > Numba CUDA > Numba CPU > NumPy.

``get_crosser("auto")`` takes the first that can run here, compiles it on a small input so the
first request does not pay for JIT, and logs which it chose. A backend forced by name
(``RANKSERVE_CROSS_BACKEND=cupy``) that cannot run raises :class:`KernelBackendError` with the
reason: never a silent fallback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from kernels._numpy import assemble_numpy
from kernels.spec import (
    AssembleFn,
    CrossInputs,
    CrossOutput,
    CrossSpec,
    FeatureInputs,
    cross_with,
    plan_of_cross_spec,
)

__all__ = ["BACKENDS", "KernelBackendError", "Crosser", "available_backends", "get_crosser", "gpu_unavailable_reason",
           "set_cpu_threads"]

log = logging.getLogger(__name__)

BACKENDS = ("cupy", "numba_cuda", "numba_cpu", "numpy")


class KernelBackendError(RuntimeError):
    """A crossing backend was asked for by name but cannot run here."""


@dataclass(frozen=True)
class Crosser:
    """A chosen backend. ``assemble`` (a ``kernels.spec.FeaturePlan``'s features) and ``cross``
    (the crossing contract, through the same kernel) take host (NumPy) inputs and return host
    outputs."""

    backend: str
    assemble: AssembleFn

    def cross(self, inputs: CrossInputs, spec: CrossSpec) -> CrossOutput:
        return cross_with(self.assemble, inputs, spec)


def gpu_unavailable_reason() -> str | None:
    """Why no real CUDA GPU can be used here, or ``None`` when Numba sees one.

    Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) is never counted as a GPU: it runs
    ``@cuda.jit`` kernels on the CPU, and ``numba.cuda.is_available()`` says True under it.
    """
    try:
        import numba
        from numba import cuda
    except ImportError as err:
        return f"numba CUDA support is not installed ({err})"
    if getattr(numba.config, "ENABLE_CUDASIM", 0):  # set at import from the environment
        return "only Numba's CUDA simulator is active (NUMBA_ENABLE_CUDASIM=1): it is not a GPU"
    try:
        if cuda.is_available():
            return None
    except Exception as err:  # noqa: BLE001 - any driver problem means no usable GPU here
        return f"no CUDA GPU: {err}"
    return "no CUDA GPU visible (numba.cuda.is_available() is False)"


def _load(name: str, *, allow_simulator: bool = True) -> AssembleFn:
    """The backend's function, or KernelBackendError saying why it cannot run here."""
    if name == "numpy":
        return assemble_numpy
    if name == "numba_cpu":
        try:
            from kernels._numba_cpu import assemble_numba_cpu
        except ImportError as err:
            raise KernelBackendError(f"numba_cpu: numba is not installed ({err})") from err
        return assemble_numba_cpu
    if name == "numba_cuda":
        try:
            import numba
            from numba import cuda
        except ImportError as err:
            raise KernelBackendError(f"numba_cuda: numba CUDA support is not installed ({err})") from err
        simulated = bool(getattr(numba.config, "ENABLE_CUDASIM", 0))  # set at import from the environment
        if simulated and not allow_simulator:
            raise KernelBackendError("numba_cuda: only the CUDA simulator is active (NUMBA_ENABLE_CUDASIM=1)")
        if not simulated and not cuda.is_available():
            raise KernelBackendError("numba_cuda: no CUDA GPU / driver visible to Numba")
        from kernels._numba_cuda import assemble_numba_cuda

        return assemble_numba_cuda
    if name == "cupy":
        try:
            import cupy
        except ImportError as err:
            raise KernelBackendError(f"cupy: CuPy is not installed ({err}); install the 'gpu' extra") from err
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise KernelBackendError("cupy: no CUDA device")
        except cupy.cuda.runtime.CUDARuntimeError as err:
            raise KernelBackendError(f"cupy: CUDA runtime unavailable ({err})") from err
        from kernels._cupy import assemble_cupy

        return assemble_cupy
    raise KernelBackendError(f"unknown crossing backend {name!r}; expected auto or one of {BACKENDS}")


def available_backends(*, allow_simulator: bool = True) -> list[str]:
    """Backends that can run in this process, fastest first."""
    out = []
    for name in BACKENDS:
        try:
            _load(name, allow_simulator=allow_simulator)
        except KernelBackendError:
            continue
        out.append(name)
    return out


def set_cpu_threads(n: int) -> None:
    """Threads of the Numba CPU kernel in this process (at most Numba's own limit)."""
    try:
        import numba
    except ImportError:
        return
    limit = int(getattr(numba.config, "NUMBA_NUM_THREADS", 1))  # set at import from the environment
    numba.set_num_threads(max(1, min(n, limit)))


def _warm_up(fn: AssembleFn) -> None:
    one = np.zeros((2, 2), dtype=np.int64)
    fn(FeatureInputs.of_cross(CrossInputs(np.zeros(3, np.int64), np.zeros(3, np.int64), one, one,
                                          np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))),
       plan_of_cross_spec(CrossSpec(pairs=((0, 0),), buckets=7, dense_dim=2)))


def get_crosser(backend: str = "auto") -> Crosser:
    """The forced backend, or the fastest available one for ``"auto"`` (compiled before return)."""
    if backend != "auto":
        fn = _load(backend)
        _warm_up(fn)
        log.info("feature crossing backend: %s (forced)", backend)
        return Crosser(backend, fn)
    reasons = []
    for name in BACKENDS:
        try:
            fn = _load(name, allow_simulator=False)
            _warm_up(fn)
        except KernelBackendError as err:
            reasons.append(str(err))
            continue
        except Exception as err:  # noqa: BLE001 - a backend that fails to compile is skipped, with why
            reasons.append(f"{name}: failed to run ({err})")
            continue
        log.info("feature crossing backend: %s (auto; skipped: %s)", name, "; ".join(reasons) or "none")
        return Crosser(name, fn)
    raise KernelBackendError("no crossing backend available: " + "; ".join(reasons))
