"""GPU tests run only where a CUDA GPU is visible; elsewhere each ``gpu``-marked test is skipped
with the reason (no CuPy / no device / no driver)."""

from __future__ import annotations

import pytest


def gpu_absent_reason() -> str | None:
    """None if CuPy or Numba sees a CUDA device, else why not."""
    reasons = []
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return None
        reasons.append("CuPy sees no CUDA device")
    except Exception as err:  # noqa: BLE001 - not installed, or no driver: no GPU for CuPy
        reasons.append(f"CuPy unusable ({type(err).__name__}: {err})")
    try:
        from numba import cuda

        if cuda.is_available():
            return None
        reasons.append("numba.cuda.is_available() is False")
    except Exception as err:  # noqa: BLE001 - any import or driver problem means no GPU here
        reasons.append(f"Numba CUDA unusable ({type(err).__name__}: {err})")
    return "no CUDA GPU: " + "; ".join(reasons)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("gpu" in item.keywords for item in items):
        return
    reason = gpu_absent_reason()
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
