"""GPU tests run only where a real CUDA GPU is visible; elsewhere they skip with the reason.

Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) is not a GPU: under it these tests skip too
(``kernels.gpu_unavailable_reason``; ``tests/unit/test_gpu_detection.py`` proves it).
"""

from __future__ import annotations

import pytest

from kernels import gpu_unavailable_reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    for item in items:  # the marker, not the keywords: a parameter named "gpu" is no GPU test
        if item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason=reason))
