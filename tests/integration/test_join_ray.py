"""``rankserve log join --ray``: a local Ray cluster's workers read the log with Ray Data, and the
join gives what the DuckDB path gives from the same files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tests.unit import data_files
from tests.unit.log_files import Served, write_events, write_served

REPO_ROOT = Path(__file__).resolve().parents[2]


def _rankserve(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKSERVE_")}
    env["RANKSERVE_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "serving.cli", *argv], cwd=REPO_ROOT, env=env, text=True,
                          capture_output=True, timeout=300, check=False)


def test_the_ray_data_path_joins_as_duckdb_does(tmp_path: Path) -> None:
    files = data_files.write(tmp_path / "files")
    data = tmp_path / "data"
    assert _rankserve(data, "data", "import", "shop", *files.args()).returncode == 0
    log = data / "datasets" / "shop" / "log"
    for replica in ("host-1", "host-2"):
        write_served(log, [Served(f"{replica}-r{i}", i, [("s1", 0.9), ("s2", 0.1)], user_id="100")
                           for i in range(20)], replica=replica)
        write_events(log, [(f"{replica}-r{i}", "s2", "click", i + 1) for i in range(5)], replica=replica)
    local = _rankserve(data, "log", "join", "shop", "--out", str(tmp_path / "duck.parquet"))
    assert local.returncode == 0, local.stderr
    on_ray = _rankserve(data, "log", "join", "shop", "--ray", "local", "--out", str(tmp_path / "ray.parquet"))
    assert on_ray.returncode == 0, on_ray.stderr
    assert on_ray.stdout.splitlines()[0] == local.stdout.splitlines()[0] == \
        "40 served records, 80 impressions, 10 events: 10 joined, 0 unmatched, 0 late"
    assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "duck.parquet"))
