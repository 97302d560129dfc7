"""The build's pre-flight: a usable cache is used, a damaged one or another version's is refused
with how to rebuild it, and a build that does not fit this machine is refused before it starts."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from serving.errors import BuildCacheError, InsufficientResourcesError
from serving.triton.digests import record_digests
from training import preflight
from training.preflight import (
    BUILD_FORMAT,
    DATA_FILES,
    MODELS,
    Need,
    check_resources,
    plan,
    scenarios_missing,
)


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, Path]:
    """A small but complete cache: build.json, the three data files, both models with a version."""
    data, repo = tmp_path / "data", tmp_path / "repo"
    data.mkdir()
    for name, keys in DATA_FILES.items():
        np.savez(data / name, **{k: np.arange(1000, dtype=np.float32) for k in keys})
    for model in MODELS:
        (repo / model / "1").mkdir(parents=True)
        (repo / model / "config.pbtxt").write_text(f'name: "{model}"\n')
        (repo / model / "1" / "model.pt").write_bytes(b"torchscript")
        record_digests(repo / model / "1")
    (data / "build.json").write_text(json.dumps({"format": BUILD_FORMAT, "seed": 0, "config": {},
                                                 "quality": {}, "versions": {"ranker": 1, "user_tower": 1}}))
    return data, repo


def test_a_usable_cache_is_used(cache: tuple[Path, Path]) -> None:
    data, repo = cache
    assert plan(data, repo, config={}, force=False) is not None
    # a cache from before the format field is format 1
    summary = json.loads((data / "build.json").read_text())
    del summary["format"]
    (data / "build.json").write_text(json.dumps(summary))
    assert BUILD_FORMAT == 1 and plan(data, repo, config={}, force=False) is not None


def test_a_cache_from_before_scenarios_is_completed_not_rebuilt(cache: tuple[Path, Path]) -> None:
    """``plan`` still uses it; ``scenarios_missing`` says the build must add the demo scenarios."""
    data, repo = cache
    summary = plan(data, repo, config={}, force=False)
    assert summary is not None and scenarios_missing(summary, repo)
    summary["quality"]["scenarios"] = {"home": {"version": 1}}
    assert scenarios_missing(summary, repo)  # figures, but no scenario files in the repository
    (repo / "scenarios").mkdir()
    (repo / "scenarios" / "live.json").write_text("{}")
    assert not scenarios_missing(summary, repo)
    assert not scenarios_missing({**summary, "index": False, "quality": {}}, repo)  # nothing to measure


@pytest.mark.parametrize("damage", ["truncated npz", "garbage build.json", "missing key", "lost model.pt"])
def test_a_damaged_cache_is_refused_with_how_to_rebuild(cache: tuple[Path, Path], damage: str) -> None:
    data, repo = cache
    if damage == "truncated npz":
        blob = (data / "marketplace.npz").read_bytes()
        (data / "marketplace.npz").write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage build.json":
        (data / "build.json").write_text('{"seed": 0, "sca')
    elif damage == "missing key":
        np.savez(data / "truth.npz", u_lat=np.zeros(3))
    else:
        (repo / "ranker" / "1" / "model.pt").unlink()
    with pytest.raises(BuildCacheError) as info:
        plan(data, repo, config={}, force=False)
    assert "damaged" in info.value.message and "rankserve build --force" in (info.value.hint or "")
    assert info.value.exit_status == 4


def test_a_cache_from_another_version_is_refused(cache: tuple[Path, Path]) -> None:
    data, repo = cache
    summary = json.loads((data / "build.json").read_text())
    (data / "build.json").write_text(json.dumps({**summary, "format": BUILD_FORMAT + 1}))
    with pytest.raises(BuildCacheError, match="another rankserve version") as info:
        plan(data, repo, config={}, force=False)
    assert "--force" in (info.value.hint or "")


def test_force_rebuilds_over_a_damaged_cache(cache: tuple[Path, Path]) -> None:
    data, repo = cache
    (data / "build.json").write_text("not json")
    assert plan(data, repo, config={}, force=True) is None  # a build is needed, and fits


def test_a_build_larger_than_the_free_disk_is_refused_before_it_starts(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    scale = math.ceil(2 * Need(1).largest_scale("disk", free)) + 1  # twice what this disk holds
    with pytest.raises(InsufficientResourcesError, match=r"of disk under") as info:
        check_resources(tmp_path / "data", tmp_path / "repo", Need(scale))
    assert "RANKSERVE_DATA_DIR" in (info.value.hint or "") and "--items" in (info.value.hint or "")
    assert not (tmp_path / "data").exists()


def test_memory_is_the_lower_of_the_machine_s_and_the_container_s(monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"/proc/meminfo": "MemTotal: 100 kB\nMemAvailable:    8000000 kB\n",
             "/sys/fs/cgroup/memory.max": "2147483648\n", "/sys/fs/cgroup/memory.current": "1073741824\n"}
    monkeypatch.setattr(preflight, "_read_int", lambda p: int(files[p]) if p in files else None)
    monkeypatch.setattr(preflight, "_proc_kb", lambda p, k: 8000000 * 1024 if p in files else None)
    assert preflight.available_memory_bytes() == (1 << 30, "memory left in this container's limit")
    files.pop("/sys/fs/cgroup/memory.max")
    assert preflight.available_memory_bytes() == (8000000 * 1024, "available memory")


def test_the_need_grows_with_the_scale() -> None:
    small, large = Need(0.25), Need(4)
    for what in ("memory", "disk", "address space"):
        assert 0 < small.bytes(what) < large.bytes(what)
        assert Need(1).largest_scale(what, Need(2).bytes(what)) == pytest.approx(2, rel=1e-3)
