"""'GPU visible' never means Numba's CUDA simulator: with ``NUMBA_ENABLE_CUDASIM=1`` the detection
says why there is no GPU, and ``tests/gpu`` skips instead of running (and failing on a missing CuPy)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.kernel_cases import run_on_cuda_simulator

ROOT = Path(__file__).resolve().parents[2]

_SIM = """
import numba
from numba import cuda
from kernels import gpu_unavailable_reason
assert numba.config.ENABLE_CUDASIM and cuda.is_available()  # the simulator claims a device
reason = gpu_unavailable_reason()
assert reason is not None and "simulator" in reason, reason
print("sim-ok")
"""


def test_the_cuda_simulator_is_not_a_gpu() -> None:
    run_on_cuda_simulator(_SIM)


def test_gpu_tests_skip_under_the_cuda_simulator() -> None:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/gpu"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    summary = text.strip().splitlines()[-1]
    assert re.search(r"\d+ skipped", summary) and "passed" not in summary and "failed" not in summary, summary
    assert "simulator" in text, text[-3000:]
