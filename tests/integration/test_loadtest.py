"""A short, bounded locust run against the session's server: report, plots, zero failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_loadtest_runs_headless_and_reports(rankserve_url: str, settings, tmp_path: Path) -> None:
    out = tmp_path / "lt"
    proc = subprocess.run([sys.executable, "-m", "loadtest.run", "--host", rankserve_url, "--shape", "constant",
                           "--users", "4", "--duration-s", "8", "--data", str(settings.marketplace_path),
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
