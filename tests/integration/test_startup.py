"""`rankserve serve` in a terminal, as a person sees it: one summary screen (versions and quality,
backends, addresses, metrics, the log file, a request to try), third-party output in the log file
and not on the screen, and a clean stop on Ctrl-C. Its own server, on a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.net import QUIET_PORTS, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A pseudo-terminal 160 columns wide running one command; collects what it shows."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self._master = master
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # the command's side closed
                return
            if not data:
                return
            self._chunks.append(data)

    @property
    def text(self) -> str:
        """What was shown, without colours and cursor moves."""
        return _ANSI.sub("", b"".join(self._chunks).decode(errors="replace")).replace("\r", "")

    def wait_for(self, needle: str, timeout_s: float) -> bool:
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end and self.proc.poll() is None:
            if needle in self.text:
                return True
            time.sleep(0.2)
        return needle in self.text

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        os.close(self._master)


def test_serve_shows_one_screen_and_sends_the_rest_to_its_log_file() -> None:
    port, grpc_port = free_port(QUIET_PORTS), free_port(QUIET_PORTS)
    env = {**os.environ, "RANKSERVE_PORT": str(port), "RANKSERVE_GRPC_PORT": str(grpc_port), "TERM": "xterm"}
    term = Terminal([sys.executable, "-m", "serving.cli", "serve", "--no-build"], env)
    try:
        assert term.wait_for("  try\n", 240), term.text[-3000:]
        screen = term.text[term.text.index("rankserve is serving"):]
        rows = dict(re.findall(r"^  (models|backends|scenarios|HTTP|gRPC|metrics|logs) +(.+)$", screen, re.M))
        assert set(rows) == {"models", "backends", "scenarios", "HTTP", "gRPC", "metrics", "logs"}, screen
        assert re.match(r"home v\d+ \(default\)", rows["scenarios"]) and "similar v" in rows["scenarios"], screen
        assert re.match(r"data seed \d+: [\d,]+ items, [\d,]+ users, click rate \d+\.\d%(, built \d{4}-\d\d-\d\d)? · "
                        r"ranker v\d+ · user_tower v\d+ · "
                        r"AUC 0\.\d{3} \(oracle 0\.\d{3}\) · recall@500 [01]\.\d{3} · NDCG@20 0\.\d{3}$",
                        rows["models"]), rows["models"]
        assert re.match(r"crossing \w+ · FAISS (CPU|GPU) \((ivf|flat)\) · Triton embedded, (CPU|GPU) instances",
                        rows["backends"]), rows["backends"]
        assert rows["HTTP"].startswith(f"http://127.0.0.1:{port}/v1/rank")
        assert rows["gRPC"].startswith(f"127.0.0.1:{grpc_port}  rankserve.v1.Ranker/Rank")
        assert rows["metrics"].startswith(f"http://127.0.0.1:{port}/metrics")
        # the request to try, as shown, works
        curl = re.search(r"curl -s -X POST (\S+) -H '[^']+' -d '(\{.*\})'", screen)
        assert curl is not None, screen
        answer = httpx.post(curl.group(1), content=curl.group(2), headers={"content-type": "application/json"},
                            timeout=30)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 5
        term.proc.send_signal(signal.SIGINT)
        assert term.proc.wait(timeout=90) == 0
    finally:
        term.close()
    # the one warning a healthy start may show: Ray's node started a second time (ray_runtime.init_ray)
    shown = "\n".join(ln for ln in term.text.splitlines() if "ray: the local node did not start" not in ln)
    assert shown.rstrip().endswith("stopped: nothing of rankserve is left running"), shown[-1000:]
    for chatter in ("faiss.loader", "ModuleNotFoundError", "(ServeController", "(ServeReplica", "(HAProxyManager",
                    " INFO ", "WARNING"):
        assert chatter not in shown, chatter
    assert len(shown[shown.index("rankserve is serving"):].strip().splitlines()) <= 16
    log = Path(rows["logs"].split("  (")[0])
    assert log.is_file() and log.parent.name == "logs"
    logged = log.read_bytes().decode(errors="replace")
    for chatter in ("faiss.loader", "(ServeController", "(ServeReplica", "starting Triton"):
        assert chatter in logged, chatter
    assert "\x1b[" not in logged  # Ray's colour codes stay out of the file
    # the Ray Serve warning about max_batch_size * max_concurrent_batches came from @serve.batch,
    # which rankserve no longer uses: nothing of the kind at the first request
    assert "max_batch_size" not in logged and "max_concurrent_batches" not in logged
