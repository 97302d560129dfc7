"""Each `rankserve chaos` scenario under load, against a `rankserve serve` of its own (the
session's server is left alone): overload sheds fast, mixed deadlines spare the generous, a
killed Triton degrades then recovers, a killed replica comes back, SIGTERM drains cleanly.

Marked `slow` (`make slow-test`): a minute and a half of load next to a server. `make test` checks
each fault's mechanism at a low load on the server of tests/integration/test_startup.py; overload
and deadlines are checked there by tests/integration/test_app.py and tests/unit/test_dispatch.py."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import chaos
from loadtest.workload import recall_bodies, write_bodies
from serving.config import Settings
from serving.pipeline.features import FeatureTables
from tests.faults import children_stopped_after

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[chaos.ChaosServer]:
    log = tmp_path_factory.mktemp("chaos") / "serve.log"
    # a small admission bound, so that a load this machine can offer next to the tests overloads it
    srv = chaos.ChaosServer(settings, log, env={"RANKSERVE_MAX_QUEUED_REQUESTS": "8"}).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def bodies(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    n_users = FeatureTables.load(settings.marketplace_path).n_users
    return write_bodies(recall_bodies(n_users, 512), tmp_path_factory.mktemp("bodies"))


ARGS = argparse.Namespace(capacity_rps=60.0, duration_s=5.0)
# load kept on after a kill long enough for what comes back on a busy 2-core machine (a bound,
# not a measure: `rankserve chaos` measures): Triton restarts in ~5 s, a replica in ~15 s quiet
_TRITON_KILL = chaos._kill("triton_kill", "tritonserver", tail_s=40)
_REPLICA_KILL = chaos._kill("replica_kill", "ray::ServeReplica", tail_s=60)


def test_overload_is_shed_fast_and_admitted_requests_meet_their_deadline(server, bodies: Path,  # noqa: ANN001
                                                                          tmp_path: Path) -> None:
    out = chaos._overload(server, bodies, argparse.Namespace(capacity_rps=150.0, duration_s=5.0), tmp_path)
    print(chaos.markdown([out]))
    assert out.client_timeouts == 0 and out.other_failures == 0, out
    assert out.shed_503 > 0 and out.ok > 0, out
    assert out.details["ok_beyond_deadline"] == 0
    assert out.details["p99_503_ms"] < 1000  # fast, even on a machine busy with the test suite


def test_mixed_deadlines_never_degrade_the_generous(server, bodies: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out = chaos._deadlines(server, bodies, ARGS, tmp_path)
    print(chaos.markdown([out]))
    assert out.details["generous"] > 50
    assert out.details["generous_degraded"] == 0 and out.details["generous_failed"] == 0, out


def test_a_killed_triton_degrades_answers_then_recovers(server, bodies: Path, tmp_path: Path) -> None:  # noqa: ANN001
    with children_stopped_after(server.pid_of("tritonserver")):
        out = _TRITON_KILL(server, bodies, ARGS, tmp_path)
    print(chaos.markdown([out]))
    assert out.other_failures == 0 and out.client_timeouts == 0, out
    assert out.degraded > 0, "the kill was not seen"
    assert out.recovery_s is not None, out
    assert server.wait_ready(60)


def test_a_killed_replica_is_replaced_and_its_failures_are_bounded(server, bodies: Path,  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    out = _REPLICA_KILL(server, bodies, ARGS, tmp_path)
    print(chaos.markdown([out]))
    assert out.recovery_s is not None, f"answers did not come back: {out}"
    # bounded: the failed requests are those sent while no replica answered (and those in flight
    # at the kill), not more; every request sent after the recovery was answered
    rate = 0.5 * ARGS.capacity_rps
    assert out.requests - out.ok <= rate * (out.recovery_s + 2), out
    assert server.wait_ready(120)


def test_sigterm_drains_in_flight_requests_and_exits(server, bodies: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out = chaos._drain(server, bodies, ARGS, tmp_path)
    print(chaos.markdown([out]))
    assert out.details["exit_code"] == 0, out
    assert out.details["exit_s"] < 90, out  # a hang bound: about 7 s on a quiet machine (the drain itself is 5 s at most)
    assert out.details["reset_in_flight"] == 0, out  # every request sent during the drain was answered
    assert out.details["during_drain"].get("200", 0) + out.details["during_drain"].get("503", 0) > 0, out
    assert out.other_failures == out.details["reset_at_close"] and out.client_timeouts == 0, out
