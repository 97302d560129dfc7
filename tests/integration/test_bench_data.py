"""``rankserve bench --data shop`` end to end on the second marketplace (imported and trained once
a session: conftest's ``marketplace``), at one level for the shortest points: the servers it
starts serve that data set, and they say so themselves (the report's ``server`` figures come
from their /metrics: the requests they answered, their catalogue's items, their live ranker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.data.store import DataSetStore
from serving.repository.registry import ModelRegistry
from tests.integration.marketplace import NAME, Marketplace

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_bench_measures_the_data_set_it_is_given(marketplace: Marketplace, tmp_path: Path) -> None:
    data_dir = marketplace.copy(tmp_path / "data")
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKSERVE_")} | {"RANKSERVE_DATA_DIR": str(data_dir)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "bench", "--data", NAME, "--levels", "1",
                           "--duration-s", "1", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    print(f"rankserve bench --data {NAME}: {time.monotonic() - t0:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    tables = DataSetStore(data_dir).dataset(NAME).tables()
    live = ModelRegistry(data_dir / "datasets" / NAME / "model_repository").traffic("ranker").live
    assert report["data_set"] == NAME
    assert report["quality"]["n_items"] == tables.n_items and report["quality"]["ranker_version"] == live
    for key in ("floor", "triton_floor"):  # in-process, on the data set's tables and models
        (point,) = report["results"][key]
        assert point["requests"] > 0 and point["failures"] == 0, point
    for key in ("rankserve", "rankserve_grpc", "no_batching"):
        (point,) = report["results"][key]
        # the requests carry the schema's string ids and a context (device, recent items) that the
        # demo would refuse: none failed, and the server counted every one answered (its warm-up too)
        assert point["requests"] > 0 and point["failures"] == 0, point
        server = point["server"]
        assert server["answered"] >= point["requests"], point
        assert server["catalogue_items"] == tables.n_items, point  # the demo's catalogue holds 50,000
        assert server["ranker_version"] == live, point
    assert f"data set {NAME}" in proc.stdout and "ratios:" in proc.stdout
