"""The GPU check's parts that need no GPU and no server: the sweep's figures on the real pipeline
with fake models, the headline and the last line, pytest's summary, the carry (slimmed wheel,
what travels, the device command)."""

from __future__ import annotations

import asyncio
import subprocess
import zipfile
from pathlib import Path

from benchmarks.gpu import check
from benchmarks.gpu.check import pytest_counts
from benchmarks.gpu.probe import headline, measure_point, warm_up
from benchmarks.gpu.report import final_line, markdown
from serving.schemas import RankRequest
from tests.unit.fakes import ScoringClient, make_pipeline, make_repo


def _point(cand_per_s: float, p99: float, failures: int = 0, batch: int = 1) -> dict:
    return {"way": "triton", "candidates": 500, "batch": batch, "requests": 10, "rps": 1.0, "failures": failures,
            "candidates_per_s": cand_per_s, "p50_ms": p99 / 2, "p99_ms": p99,
            "stage_share": {"recall": 0.2, "cross": 0.1, "rank": 0.6, "other": 0.1}}


def test_measure_point_counts_rows_latency_and_stage_shares(tmp_path: Path) -> None:
    p = make_pipeline(make_repo(tmp_path), ScoringClient())
    reqs = [RankRequest.model_validate({"user_id": u, "k": 5}) for u in range(20)]
    point = asyncio.run(measure_point(p, reqs, way="inprocess", batch=4, duration_s=0.05, min_batches=3)).to_json()
    assert point["batches"] >= 3 and point["requests"] == 4 * point["batches"] and point["failures"] == 0
    assert point["candidates"] == 40 and point["candidates_per_s"] > 0 and point["p99_ms"] >= point["p50_ms"] > 0
    assert set(point["stage_share"]) == {"recall", "cross", "rank", "other"}
    assert abs(sum(point["stage_share"].values()) - 1.0) < 1e-3


def test_warm_up_runs_every_batch_size_twice(tmp_path: Path) -> None:
    client = ScoringClient()
    p = make_pipeline(make_repo(tmp_path), client)
    reqs = [RankRequest.model_validate({"user_id": u}) for u in range(5)]
    assert asyncio.run(warm_up(p, reqs, [1, 3])) > 0
    assert [rows for model, _, rows in client.calls if model == "user_tower"] == [1, 1, 3, 3]


def test_degraded_answers_count_as_failures(tmp_path: Path) -> None:
    p = make_pipeline(make_repo(tmp_path), ScoringClient(fail={"ranker"}))
    point = asyncio.run(measure_point(p, [RankRequest.model_validate({"user_id": 1})], way="triton", batch=2, duration_s=0.0))
    assert point.failures == point.requests > 0


def test_headline_prefers_points_within_the_p99_target_and_skips_failures() -> None:
    pts = [_point(9e6, 40.0), _point(5e6, 10.0), _point(6e6, 12.0, failures=1)]
    assert headline(pts, 15.0)["candidates_per_s"] == 5e6 and headline(pts, 15.0)["meets_p99_target"]
    slow = headline([_point(9e6, 40.0)], 15.0)
    assert slow["candidates_per_s"] == 9e6 and not slow["meets_p99_target"]
    assert headline([_point(1.0, 1.0, failures=2)], 15.0) is None


def _report(kinds: dict, *, gpu_used: bool | None, match: bool = True, dry: bool = False) -> dict:
    return {"dry_run": dry, "triton": {"instance_kinds": kinds, "gpu_used": gpu_used, "score_check": {"match": match}},
            "pipelines": {"inprocess": {"points": [_point(3e6, 9.0)]}, "triton": {"points": [_point(2e6, 12.34)]}}}


def test_final_line_says_what_ran_where() -> None:
    gpu = {"ranker": "KIND_GPU", "user_tower": "KIND_GPU"}
    line = final_line(_report(gpu, gpu_used=True), dry=False, p99_target_ms=15.0)
    assert line == ("gpu-check: triton=KIND_GPU scores_match=true pipeline_inprocess_cand_per_s=3000000 "
                    "pipeline_triton_cand_per_s=2000000 p99_ms=12.3")
    assert "triton=KIND_GPU_NOT_USED " in final_line(_report(gpu, gpu_used=False), dry=False, p99_target_ms=15.0)
    dry = final_line(_report({"ranker": "KIND_CPU", "user_tower": "KIND_CPU"}, gpu_used=None, dry=True),
                     dry=True, p99_target_ms=15.0)
    assert dry.startswith("gpu-check: dry_run=true triton=KIND_CPU scores_match=true ")
    failed = {"errors": {"triton": "TritonStartError: no"}, "triton": {"kind_requested": "gpu"}}
    assert final_line(failed, dry=False, p99_target_ms=15.0) == (
        "gpu-check: triton=FAILED scores_match=false pipeline_inprocess_cand_per_s=none "
        "pipeline_triton_cand_per_s=none p99_ms=none")


def test_markdown_has_a_row_per_point_and_the_goal() -> None:
    report = _report({"ranker": "KIND_GPU"}, gpu_used=True)
    report["final_line"] = final_line(report, dry=False, p99_target_ms=15.0)
    md = markdown(report, goal_cand_per_s=5e6, p99_target_ms=15.0)
    assert report["final_line"] in md and "torch_exact, not FAISS" in md
    assert "triton: best 2,000,000 candidates/s (40.0% of the goal)" in md
    assert md.count("| inprocess | 500 |") == 1 and md.count("| triton | 500 |") == 1


def test_pytest_counts_reads_the_closing_line() -> None:
    assert pytest_counts("....\n=== 41 passed, 1 skipped in 9.31s ===\n") == {"passed": 41, "skipped": 1}
    assert pytest_counts("x\n2 failed, 3 passed, 1 error in 1s") == {"failed": 2, "passed": 3, "error": 1}
    assert pytest_counts("no summary") == {}


def _fake_pytriton(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name in ("pytriton/__init__.py", "pytriton/tritonserver/bin/tritonserver",
                     "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub",
                     "pytriton/tritonserver/python_backend_stubs/3.13/triton_python_backend_stub",
                     "nvidia_pytriton.libs/libpython3-419a3a08.13.so.1.0", "nvidia_pytriton.libs/libcudart-1.so.12"):
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o100755 << 16 if "bin/" in name else 0o100644 << 16
            z.writestr(info, b"x" * 10)
        z.writestr("nvidia_pytriton-0.7.0.dist-info/RECORD", "".join(
            f"{n},sha256=abc,10\n" for n in z.namelist()) + "nvidia_pytriton-0.7.0.dist-info/RECORD,,\n")


def test_slim_pytriton_keeps_the_device_python_only(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.whl", tmp_path / "dst.whl"
    _fake_pytriton(src)
    dropped = check.slim_pytriton(src, dst, python="3.12")
    assert sorted(dropped) == ["nvidia_pytriton.libs/libpython3-419a3a08.13.so.1.0",
                               "pytriton/tritonserver/python_backend_stubs/3.13/triton_python_backend_stub"]
    with zipfile.ZipFile(dst) as z:
        names = set(z.namelist())
        record = z.read("nvidia_pytriton-0.7.0.dist-info/RECORD").decode()
        mode = z.getinfo("pytriton/tritonserver/bin/tritonserver").external_attr >> 16
    assert "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub" in names
    assert not names & set(dropped) and not any(d in record for d in dropped) and "libcudart" in record
    assert mode & 0o111, "the server binary stays executable"


def test_travelling_bytes_counts_tracked_and_untracked_not_ignored(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/.whl/\n")
    (tmp_path / "a.txt").write_bytes(b"a" * 100)
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "big.whl").write_bytes(b"w" * 5000)
    assert check.travelling_bytes(tmp_path) == 100 + len("/.whl/\n")
    assert check._ignored(tmp_path, tmp_path / ".whl")


def test_device_command_installs_the_wheels_first_and_fits() -> None:
    cmd = check.device_command()
    assert cmd.startswith("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
                          "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site")
    assert '--out "$OUT"' in cmd and len(cmd) <= 2000
    assert check.CALL_TIMEOUT_S > check.CHECK_BUDGET_S + 60


def test_every_carried_distribution_is_installed_here() -> None:
    assert [p.split("==")[0] for p in check.pins()] == list(check.CARRY)
