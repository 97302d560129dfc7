"""Triton's python stub with NumPy 2 in its environment serves the model's own scores.

The stub is built against NumPy 1; with NumPy 2 (the GPU device image has 2.5) ``as_numpy()`` on a
request's inputs gave arrays that did not hold the request's values, and every served score was
wrong (docs/gpu/before-fix-numpy2-inputs.json). rankserve pins NumPy 1 for itself, so this test
builds the environment a NumPy 2 user has: a venv whose site-packages put NumPy 2 first and
rankserve's own packages after it. The stub runs in the venv whose ``bin/`` leads ``PATH``
(``serving/triton/process.py``), so the served path is Triton's stub under NumPy 2; its log line
says which NumPy it imported, and the test checks that too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

_SERVE_AND_CHECK = """
import json, sys
from pathlib import Path
import numpy
from serving.config import Settings
from benchmarks.gpu.probe import score_check
from serving.triton.process import TritonProcess
repo, runtime = Path(sys.argv[1]), Path(sys.argv[2])
settings = Settings.from_env(model_repository=repo)
with TritonProcess(repo, runtime_dir=runtime, kind="cpu") as triton:
    check = score_check(settings, triton.grpc_url, rows=1024)
    log = triton.log_path.read_text()
print(json.dumps({"numpy": numpy.__version__, "check": check,
                  "stub_lines": [ln for ln in log.splitlines() if " runs on " in ln]}))
"""


@pytest.fixture(scope="module")
def numpy2_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv's python that imports NumPy 2 first, then everything of rankserve's venv."""
    root = tmp_path_factory.mktemp("numpy2")
    target = root / "numpy2"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          "--target", str(target), "numpy>=2.2,<3"], capture_output=True, text=True, timeout=300)
    if pip.returncode != 0:
        pytest.skip(f"NumPy 2 could not be installed from the package index: {pip.stderr.strip()[-300:]}")
    env = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "zz_rankserve.pth").write_text(f"{target}\n{sysconfig.get_paths()['purelib']}\n{ROOT}\n")
    return python


@pytest.mark.slow  # 11 s and a NumPy 2 venv: the stub's NumPy 2 compatibility (make slow-test)
def test_served_scores_equal_the_model_s_with_numpy_2_in_the_stub(numpy2_python: Path, settings, tmp_path: Path) -> None:  # noqa: ANN001
    repo = tmp_path / "model_repository"
    # hidden entries (.nodes: live replicas' snapshots, rewritten while the copy runs) are not models
    shutil.copytree(settings.model_repository, repo, ignore=shutil.ignore_patterns("*.faiss", "catalogue", ".*"))
    res = subprocess.run([str(numpy2_python), "-c", _SERVE_AND_CHECK, str(repo), str(tmp_path / "runtime")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["numpy"].startswith("2."), out["numpy"]
    # one line per loaded version (version_policy all; tests before this one may have pushed some), each under NumPy 2
    lines = out["stub_lines"]
    assert {m for m in ("ranker", "user_tower") if any(f'"{m} v' in ln for ln in lines)} == {"ranker", "user_tower"}
    assert all("numpy 2." in ln for ln in lines), lines
    check = out["check"]
    assert set(check["models"]) == {"ranker", "user_tower"}
    assert check["match"], check["models"]
    assert all(m["triton_rows_off"] == 0.0 for m in check["models"].values())
