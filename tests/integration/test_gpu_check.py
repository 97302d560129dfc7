"""The GPU check's dry run, end to end on this CPU machine: the no-FAISS build into a temp dir,
the real Triton (KIND_CPU), the score check, and the pipeline measured in-process and through
Triton with exact torch recall; every GPU step skipped with a line saying so; FAISS and Ray never
imported (the device image has neither)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GPU_STEPS = ("cupy crossing", "gpu_tests", "kernel_bench GPU rows", "triton KIND_GPU", "gpu usage",
             "torch_exact recall on the GPU", "in-process GPU scores vs CPU", "in-process TorchScript on the GPU")
FINAL = re.compile(r"gpu-check: dry_run=true triton=KIND_CPU scores_match=true pipeline_inprocess_cand_per_s=\d+ "
                   r"pipeline_triton_cand_per_s=\d+ p99_ms=\d+\.\d")


@pytest.mark.slow  # 24 s: the GPU check's whole dry run (make slow-test)
def test_dry_run_runs_what_a_cpu_can_and_says_what_it_skipped(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, "-m", "benchmarks.gpu.check", "--dry-run", "--items", "10000", "--users", "4000", "--duration-s", "0.3",
           "--out", str(out), "--work-dir", str(work)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0 and lines, res.stdout[-4000:] + res.stderr[-4000:]
    assert FINAL.fullmatch(lines[-1]), lines[-1]
    assert sum(ln.startswith("gpu-check:") for ln in lines) == 1
    for step in GPU_STEPS:
        assert sum(ln.startswith(f"skip: {step}: dry run") for ln in lines) == 1, step
    report = json.loads((out / "gpu-check.json").read_text())
    assert "errors" not in report and report["final_line"] == lines[-1]
    assert report["imports"] == {"faiss": False, "ray": False}
    assert report["build"]["quality"]["recall_at_500"] is None
    assert not list((work / "model_repository" / "user_tower").glob("*/items.faiss"))
    tri = report["triton"]
    assert tri["instance_kinds"] == {"ranker": "KIND_CPU", "user_tower": "KIND_CPU"}
    assert tri["instance_devices"] == {"ranker": "cpu", "user_tower": "cpu"}
    assert tri["score_check"]["match"] and set(tri["score_check"]["models"]) == {"ranker", "user_tower"}
    for way in ("inprocess", "triton"):
        points = report["pipelines"][way]["points"]
        assert {(p["candidates"], p["batch"]) for p in points} == {(500, 1), (500, 8), (2000, 1), (2000, 8)}
        assert all(p["failures"] == 0 and p["candidates_per_s"] > 0 for p in points)
    assert report["kernel_bench"]["exit"] == 0 and report["kernel_bench"]["report"]["backends"]
    md = (out / "gpu-check.md").read_text()
    assert md.count("| triton | ") == 4 and md.count("| inprocess | ") == 4 and "torch_exact" in md
    assert "runs on cpu" in (out / "gpu-check.log").read_text()
