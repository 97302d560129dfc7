"""GPU tests run only where a CUDA GPU is visible; elsewhere they skip with the reason."""

from __future__ import annotations

import pytest


def _gpu_reason() -> str | None:
    try:
        from numba import cuda

        if cuda.is_available():
            return None
    except Exception as err:  # noqa: BLE001 - any import or driver problem means no GPU here
        return f"no CUDA GPU: {err}"
    return "no CUDA GPU visible (numba.cuda.is_available() is False)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _gpu_reason()
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
