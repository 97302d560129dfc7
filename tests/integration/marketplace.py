"""The second marketplace (``training.synthetic``) as the integration tests use it: its files
imported and its default models trained once a session (conftest's ``marketplace``), a test's own
copy of that data set, the CLI run in-process on a data dir, and ``rankserve serve --data shop``
in a session of its own, stopped with Ctrl-C."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serving.cli import main
from serving.net import QUIET_PORTS, free_port
from tests.waiting import wait_for
from training.synthetic import write_marketplace

__all__ = ["NAME", "SEED", "Marketplace", "Served", "cli", "import_and_train", "serving"]

ROOT = Path(__file__).resolve().parents[2]
NAME, SEED = "shop", 5


@dataclass(frozen=True)
class Marketplace:
    """The marketplace's files and a data dir holding it imported and trained (not to be changed:
    a test that changes it works on its own :meth:`copy`)."""

    files: dict[str, Path]
    data_dir: Path

    def copy(self, to: Path) -> Path:
        """A data dir of the trained data set at ``to``, the test's own."""
        shutil.copytree(self.data_dir, to)
        return to


@dataclass
class Served:
    url: str
    grpc_target: str
    data_dir: Path
    files: dict[str, Path]
    proc: subprocess.Popen[bytes]
    log: Path

    def rank(self, body: dict) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/rank", json=body, timeout=30)


def cli(data_dir: Path, *argv: str) -> tuple[int, str]:
    """``rankserve ARGV`` in-process on ``data_dir`` (no other ``RANKSERVE_*`` setting): its exit status and output."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        for key in [k for k in os.environ if k.startswith("RANKSERVE_")]:
            mp.delenv(key)
        mp.setenv("RANKSERVE_DATA_DIR", str(data_dir))
        rc = main(list(argv))
    return rc, out.getvalue()


def import_and_train(root: Path) -> Marketplace:
    """The marketplace's files written under ``root``, imported as ``shop`` and its default models trained."""
    files = write_marketplace(root / "files", n_items=3000, n_users=300, n_impressions=30_000, seed=SEED)
    data_dir = root / "data"
    rc, out = cli(data_dir, "data", "import", NAME, "--schema", str(files["schema"]), "--items", str(files["items"]),
                  "--users", str(files["users"]), "--impressions", str(files["impressions"]))
    assert rc == 0, out
    rc, out = cli(data_dir, "train", NAME, "--seed", "0")
    assert rc == 0, out
    return Marketplace(files, data_dir)


@contextlib.contextmanager
def serving(data_dir: Path, files: dict[str, Path], log: Path) -> Iterator[Served]:
    """``rankserve serve --data shop`` on ``data_dir`` (HTTP and gRPC on free ports, its log in
    ``log``) until it is ready; stopped with Ctrl-C (then killed) on leaving."""
    port, grpc_port = free_port(QUIET_PORTS), free_port(QUIET_PORTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKSERVE_")}
    env |= {"RANKSERVE_DATA_DIR": str(data_dir), "RANKSERVE_PORT": str(port), "RANKSERVE_GRPC_PORT": str(grpc_port),
            "RANKSERVE_VERBOSE": "true"}
    with open(log, "wb") as logf:  # a session of its own: Ctrl-C reaches its whole process group
        proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", "--data", NAME], cwd=ROOT, env=env,
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    srv = Served(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", data_dir, files, proc, log)

    def ready() -> bool:
        assert proc.poll() is None, f"serve exited {proc.returncode}: {log.read_text()[-3000:]}"
        return httpx.get(f"{srv.url}/readyz", timeout=5).status_code == 200

    try:
        wait_for(ready, lambda: f"rankserve serve --data {NAME} is ready: {log.read_text()[-3000:]}", timeout_s=240,
                 poll_s=0.5, ignoring=(httpx.HTTPError,))
        yield srv
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
