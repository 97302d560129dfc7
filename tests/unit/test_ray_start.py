"""The local Ray start: a raylet that never registers costs one more start, not the server, and
what the failed start left running is stopped (other children, like Triton, are left alone)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from serving import ray_runtime
from tests.waiting import wait_for

_UNTIL_KILLED = "import signal\nwhile True: signal.pause()"


def _child(*args: str) -> subprocess.Popen[bytes]:
    """A process that runs until it is killed, once it has exec'd (its command line is its own)."""
    child = subprocess.Popen([sys.executable, "-c", _UNTIL_KILLED, *args])
    try:
        wait_for(lambda: psutil.Process(child.pid).cmdline()[-len(args):] == list(args), f"{args} exec'd",
                 poll_s=0.02)
    except BaseException:
        child.kill()
        raise
    return child


def test_orphans_of_a_failed_start_are_stopped_and_other_children_are_not(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as after a failed ray.init (the suite may hold one)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # and the suite's own Ray session is not an orphan
    orphan = _child(f"--log-dir={tmp_path}/ray/session_2026-11-30_00-00-00_1/logs")
    other = _child("--model-repository=/tmp/elsewhere")
    try:
        stopped = ray_runtime.stop_orphaned_ray_processes(timeout_s=5)
        assert stopped == [f"python[{orphan.pid}]"] or stopped == [f"{Path(sys.executable).name}[{orphan.pid}]"], stopped
        assert orphan.wait(timeout=5) is not None
        assert other.poll() is None
    finally:
        for p in (orphan, other):
            p.kill()
            p.wait()


class _FlakyInit:
    def __init__(self, failures: int, message: str) -> None:
        self.failures, self.message, self.calls = failures, message, 0

    def __call__(self, **_: Any) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise Exception(self.message)  # noqa: TRY002 - Ray's own type for this failure


@pytest.fixture
def no_ray_start(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    monkeypatch.setattr(ray_runtime, "stop_orphaned_ray_processes", lambda: [])
    monkeypatch.setattr(ray_runtime, "_apply_local_env", lambda: None)
    saved = dict(os.environ)  # init_ray sets the ingress's variables: none of them outlive the test
    yield
    os.environ.clear()
    os.environ.update(saved)


TIMEOUT = "The current node timed out during startup. This could happen because some of the raylet failed"


@pytest.mark.parametrize("message", [TIMEOUT, "Timed out waiting for file /tmp/ray/session_x/gcs_server_port_ab12"])
def test_a_raylet_or_gcs_that_does_not_start_gets_one_more_start(no_ray_start, monkeypatch, message: str) -> None:  # noqa: ANN001
    import ray

    init = _FlakyInit(1, message)
    monkeypatch.setattr(ray, "init", init)
    ray_runtime.init_ray("local")
    assert init.calls == 2


def test_a_second_failure_or_another_error_is_raised(no_ray_start, monkeypatch) -> None:  # noqa: ANN001
    import ray

    twice = _FlakyInit(2, TIMEOUT)
    monkeypatch.setattr(ray, "init", twice)
    with pytest.raises(Exception, match="timed out during startup"):
        ray_runtime.init_ray("local")
    assert twice.calls == 2

    other = _FlakyInit(1, "something else")
    monkeypatch.setattr(ray, "init", other)
    with pytest.raises(Exception, match="something else"):
        ray_runtime.init_ray("local")
    assert other.calls == 1


def test_a_connected_driver_stops_nothing(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    live = _child(f"--log-dir={tmp_path}/ray/session_2026-11-30_00-00-00_1/logs")
    try:
        assert ray_runtime.stop_orphaned_ray_processes(timeout_s=1) == []
        assert live.poll() is None  # the session it is connected to is not an orphan
    finally:
        live.kill()
        live.wait()


def test_a_fork_that_never_reached_exec_is_stopped(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A child stuck between fork and exec still carries this process's command line."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # the suite's own Ray session (if any) is not an orphan
    pid = os.fork()
    if pid == 0:  # the child: neither exec nor exit, as one stuck in a pre-exec hook
        try:  # whatever happens here (the suite's Ray driver turns SIGTERM into SystemExit), never pytest again
            while True:
                signal.pause()
        finally:
            os._exit(0)
    try:
        assert ray_runtime.stop_orphaned_ray_processes(timeout_s=5) == [f"fork[{pid}]"]
        assert not psutil.pid_exists(pid)  # stopped and reaped
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)


def _orphaned_haproxy(ingress: ray_runtime.Ingress, port: int) -> int:
    """A real HAProxy listening on ``port`` with its config in ``ingress``'s folder, whose parent
    has exited (as when Ray's HAProxy manager dies with its cluster)."""
    from ray.serve._private.haproxy import get_haproxy_binary

    cfg = ingress.haproxy_dir / "node" / "haproxy.cfg"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("defaults\n  mode http\n  timeout connect 1s\n  timeout client 1s\n  timeout server 1s\n"
                   f"frontend api\n  bind 127.0.0.1:{port}\n")
    out = subprocess.run(["sh", "-c", f'"{get_haproxy_binary()}" -db -f "{cfg}" >/dev/null 2>&1 & echo $!'],
                         capture_output=True, text=True, check=True, timeout=30)
    return int(out.stdout.strip())


def test_an_orphaned_haproxy_of_this_port_is_stopped_and_others_are_not() -> None:
    from serving.net import QUIET_PORTS, free_port, port_in_use

    mine, other = (ray_runtime.Ingress(port=free_port(QUIET_PORTS)) for _ in range(2))
    pids = [_orphaned_haproxy(mine, mine.port), _orphaned_haproxy(other, other.port)]
    try:
        wait_for(lambda: port_in_use("127.0.0.1", mine.port) and port_in_use("127.0.0.1", other.port),
                 "both HAProxies listen", poll_s=0.05)
        assert mine.stop_orphans() == [pids[0]]
        assert not psutil.pid_exists(pids[0]) or psutil.Process(pids[0]).status() == psutil.STATUS_ZOMBIE
        assert not port_in_use("127.0.0.1", mine.port)  # the port is free for the new server
        assert psutil.pid_exists(pids[1]) and port_in_use("127.0.0.1", other.port)  # another port's: left alone
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for ingress in (mine, other):
            shutil.rmtree(ingress.haproxy_dir, ignore_errors=True)
