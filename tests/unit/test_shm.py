"""The shared-memory pool of the Triton client: regions by size class, reuse, readback, cleanup
(the integration suite checks Triton reads them: tests/integration/test_triton.py)."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from serving.triton import shm
from serving.triton.shm import ShmPool


@pytest.fixture(autouse=True)
def _tmp_shm(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)


def test_regions_come_in_size_classes_and_are_reused(tmp_path) -> None:  # noqa: ANN001
    pool = ShmPool()
    a, new_a = pool.acquire(100)
    b, new_b = pool.acquire(300_000)
    assert new_a and new_b and a.size == 256 * 1024 and b.size == 512 * 1024
    pool.release(a)
    again, new = pool.acquire(200_000)
    assert again is a and not new
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, b.name])
    assert all(r.name.startswith(f"rankserve-{os.getpid()}-") for r in (a, b))
    pool.close()
    assert list(tmp_path.iterdir()) == []


def test_arrays_are_written_back_to_back_and_read_as_written(tmp_path) -> None:  # noqa: ANN001
    pool = ShmPool()
    region, _ = pool.acquire(1000)
    cat = np.arange(30, dtype=np.int64).reshape(10, 3)
    dense = np.linspace(0, 1, 40, dtype=np.float32).reshape(10, 4)
    spans = region.write([cat, dense])
    assert spans == [(0, cat.nbytes), (cat.nbytes, dense.nbytes)]
    with open(tmp_path / region.name, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        np.testing.assert_array_equal(np.frombuffer(m, np.int64, cat.size, 0).reshape(10, 3), cat)
        np.testing.assert_array_equal(np.frombuffer(m, np.float32, dense.size, cat.nbytes).reshape(10, 4), dense)
    pool.close()


def test_regions_of_dead_processes_are_removed_at_start(tmp_path) -> None:  # noqa: ANN001
    dead = 2**22 + 7  # above the default pid_max: no process has it
    (tmp_path / f"rankserve-{dead}-0").write_bytes(b"x")
    (tmp_path / f"rankserve-{os.getpid()}-99").write_bytes(b"x")  # alive: kept
    (tmp_path / "someone-else").write_bytes(b"x")
    ShmPool()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"rankserve-{os.getpid()}-99", "someone-else"])
