"""A short, bounded locust run against the session's server: report, plots, zero failures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_loadtest_runs_headless_and_reports(rankserve_url: str, settings, tmp_path: Path) -> None:
    out = tmp_path / "lt"
    proc = subprocess.run([sys.executable, "-m", "loadtest.run", "--host", rankserve_url, "--shape", "constant",
                           "--users", "4", "--duration-s", "5", "--data", str(settings.marketplace_path),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    agg = summary["aggregated"]
    assert agg["requests"] > 10 and agg["failures"] == 0
    assert {"rank:recall", "rank:candidates"} <= set(summary["by_kind"])
    for png in ("latency.png", "throughput.png", "batch_size.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "report.html").stat().st_size > 1000


def test_loadtest_refuses_non_loopback_hosts() -> None:
    proc = subprocess.run([sys.executable, "-m", "loadtest.run", "--host", "http://10.1.2.3:8000"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "loopback" in proc.stderr


def test_loadtest_over_grpc(rankserve_url: str, settings, tmp_path: Path) -> None:
    out = tmp_path / "lt-grpc"
    proc = subprocess.run([sys.executable, "-m", "loadtest.run", "--host", rankserve_url, "--protocol", "grpc",
                           "--grpc-target", f"127.0.0.1:{settings.grpc_port}", "--shape", "constant",
                           "--users", "4", "--duration-s", "6", "--data", str(settings.marketplace_path),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "grpc"
    assert summary["aggregated"]["requests"] > 10 and summary["aggregated"]["failures"] == 0
    assert {"rank:recall", "rank:candidates"} <= set(summary["by_kind"])


@pytest.mark.slow  # 11 s: the whole capacity search (its steps: tests/unit/test_capacity.py) (make slow-test)
def test_capacity_search_against_the_server(rankserve_url: str, tmp_path: Path) -> None:
    """`rankserve capacity --url`: two open-loop steps (4 and 8 req/s) under a generous target."""
    out = tmp_path / "cap"
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "capacity", "--url", rankserve_url,
                           "--start-rps", "4", "--max-rps", "8", "--growth", "2", "--refine", "0", "--step-s", "3",
                           "--p99-ms", "2000", "--peak-rps", "100", "--headroom", "0.3", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rep = json.loads((out / "capacity.json").read_text())
    assert [s["rate"] for s in rep["steps"]] == [4.0, 8.0]
    assert all(s["verdict"] is None and s["failures"] == 0 and s["requests"] > 5 for s in rep["steps"])
    assert rep["capacity_rps"] == rep["steps"][-1]["offered_rps"] > 3
    assert rep["units_for_peak"] == math.ceil(100 / (rep["capacity_rps"] * 0.7))
    assert "Capacity:" in (out / "capacity.md").read_text()
    assert (out / "capacity.png").read_bytes()[:4] == b"\x89PNG"


def test_capacity_refuses_non_loopback_hosts() -> None:
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "capacity", "--url", "http://10.1.2.3:8000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "loopback" in proc.stderr
