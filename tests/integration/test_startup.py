"""`rankserve serve` in a terminal, as a person sees it: one summary screen (versions and quality,
backends, addresses, metrics, the log file, a request to try), third-party output in the log file
and not on the screen, and a clean stop. Its own server, on a pseudo-terminal in a session of its
own (as a terminal's foreground job), put on the network as an operator would: every interface
(RANKSERVE_HOST=0.0.0.0) with API keys (RANKSERVE_AUTH=keys) and gRPC on. It shows that keys and
roles are enforced over HTTP and gRPC, that every listener beyond loopback refuses a caller
without a key, and it takes the faults of `rankserve chaos` at a low load, checking each
mechanism (the figures under load are tests/integration/test_chaos.py's, in `make slow-test`): a
killed Triton degrades answers, then they recover; a killed replica is replaced; answers and events
(over HTTP and gRPC) are counted; a Ctrl-C, that is SIGINT to the whole process group, drains the
requests in flight, then everything stops, and every answer and event is then in the served log's
Parquet files. The tests run in this order; the Ctrl-C stops the server."""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import psutil
import pyarrow.parquet as pq
import pytest

from benchmarks import chaos
from loadtest.workload import recall_bodies, write_bodies
from serving.auth import add_key, revoke_key
from serving.config import Settings
from serving.feedback.events import EVENT_SCHEMA
from serving.feedback.served import SERVED_SCHEMA
from serving.metrics import metric_sum
from serving.net import QUIET_PORTS, free_port
from serving.pipeline.features import FeatureTables
from serving.proto import ranker_pb2, ranker_pb2_grpc
from tests.faults import children_stopped_after
from tests.integration.test_security import is_loopback, listeners
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A pseudo-terminal 160 columns wide running one command; collects what it shows."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        # a session of its own: its process group is what a terminal's Ctrl-C signals
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
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

    def wait_for(self, needle: str, timeout_s: float) -> None:
        def shown() -> bool:
            assert self.proc.poll() is None, f"the command exited with {self.proc.returncode}: {self.text[-3000:]}"
            return needle in self.text

        wait_for(shown, lambda: f"the terminal shows {needle!r}: {self.text[-3000:]}", timeout_s=timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        if self._master >= 0:
            os.close(self._master)
            self._master = -1


class _OnTerminal(chaos.ChaosServer):
    """``rankserve serve --no-build`` on a pseudo-terminal with its own ports, as a person starts
    it (not verbose); chaos's faults and drain apply to it as to its own server."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        # a copy of the repository of its own: the service's metrics sum every replica that shares
        # a repository, and the suite's other servers share the session's
        repo = log_path.with_name("model_repository")
        shutil.copytree(settings.model_repository, repo, ignore=shutil.ignore_patterns(".*", "catalogue"))
        settings = settings.model_copy(update={"model_repository": repo})
        keys = settings.keys_file
        self.rank_key, self.admin_key = add_key(keys, "feed", "rank"), add_key(keys, "ops", "admin")
        key_file = log_path.with_name("rank.key")
        key_file.write_text(self.rank_key)
        # the served log and the events: rotated only after an hour, so what is on disk after the
        # stop is what the drain wrote
        self.log_dir = log_path.with_name("log")
        self.killed_replicas: set[int] = set()  # their log files stay hidden: a killed writer renames nothing
        super().__init__(settings, log_path, key_file=key_file,
                         env={"RANKSERVE_LOG_DIR": str(self.log_dir), "RANKSERVE_LOG_ROTATE_S": "3600"})
        self.grpc_port = free_port(QUIET_PORTS)
        self.env.pop("RANKSERVE_VERBOSE")
        self.env.update({"RANKSERVE_GRPC_PORT": str(self.grpc_port), "TERM": "xterm", "RANKSERVE_HOST": "0.0.0.0",
                         "RANKSERVE_AUTH": "keys"})

    def start(self, timeout_s: float = 240.0) -> _OnTerminal:
        self.term = Terminal([sys.executable, "-m", "serving.cli", "serve", "--no-build"], self.env)
        self.proc = self.term.proc
        self.term.wait_for("  try\n", timeout_s)
        self.screen = self.term.text[self.term.text.index("rankserve is serving"):]
        self.rows = dict(re.findall(r"^  (models|backends|scenarios|HTTP|gRPC|metrics|auth|logs) +(.+)$", self.screen,
                                    re.M))
        return self


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_OnTerminal]:
    srv = _OnTerminal(settings, tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        yield srv.start()
    finally:
        srv.stop()
        if hasattr(srv, "term"):
            srv.term.close()


def _rank(url: str, user_id: int, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/rank", json={"user_id": user_id, "k": 5, "timeout_ms": 10000}, headers=headers,
                      timeout=30)


def test_serve_shows_one_screen_and_sends_the_rest_to_its_log_file(server: _OnTerminal) -> None:
    port, grpc_port, screen, rows = server.port, server.grpc_port, server.screen, server.rows
    assert set(rows) == {"models", "backends", "scenarios", "HTTP", "gRPC", "metrics", "auth", "logs"}, screen
    assert rows["auth"].startswith("API keys (1 rank, 1 admin)"), rows["auth"]
    assert re.match(r"home v\d+ \(default\)", rows["scenarios"]) and "similar v" in rows["scenarios"], screen
    assert re.match(r"data seed \d+: [\d,]+ items, [\d,]+ users, click rate \d+\.\d%(, built \d{4}-\d\d-\d\d)? · "
                    r"ranker v\d+ · user_tower v\d+ · "
                    r"AUC 0\.\d{3} \(oracle 0\.\d{3}\) · recall@500 [01]\.\d{3} · NDCG@20 0\.\d{3}$",
                    rows["models"]), rows["models"]
    assert re.match(r"crossing \w+ · FAISS (CPU|GPU) \((ivf|flat)\) · Triton embedded, (CPU|GPU) instances",
                    rows["backends"]), rows["backends"]
    assert rows["HTTP"].startswith(f"http://0.0.0.0:{port}/v1/rank")
    assert rows["gRPC"].startswith(f"0.0.0.0:{grpc_port}  rankserve.v1.Ranker/Rank")
    assert rows["metrics"].startswith(f"http://0.0.0.0:{port}/metrics")
    # the request to try, as shown, works with the key it names
    curl = re.search(r"curl -s -X POST (\S+) -H '[^']+' -H \"Authorization: Bearer \$RANKSERVE_API_KEY\" "
                     r"-d '(\{.*\})'", screen)
    assert curl is not None, screen
    answer = httpx.post(curl.group(1), content=curl.group(2), timeout=30,
                        headers={"content-type": "application/json", "authorization": f"Bearer {server.rank_key}"})
    assert answer.status_code == 200 and len(answer.json()["items"]) == 5
    _assert_quiet(server.term.text)
    assert len(screen.strip().splitlines()) <= 16
    log = Path(rows["logs"].split("  (")[0])
    assert log.is_file() and log.parent.name == "logs"


def _assert_quiet(shown: str) -> None:
    """No third-party output on the screen (the one warning a healthy start may show, Ray's node
    started a second time by ray_runtime.init_ray, left aside)."""
    shown = "\n".join(ln for ln in shown.splitlines() if "ray: the local node did not start" not in ln)
    for chatter in ("faiss.loader", "ModuleNotFoundError", "(ServeController", "(ServeReplica", "(HAProxyManager",
                    " INFO ", "WARNING"):
        assert chatter not in shown, f"{chatter!r} on the screen: {shown[-2000:]}"


def test_keys_and_roles_hold_over_http_and_grpc(server: _OnTerminal) -> None:
    url, rank, admin = server.url, server.rank_key, server.admin_key
    refused = _rank(url, 1)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated", refused.text
    assert _rank(url, 1, rank).status_code == 200
    for path in ("/metrics", "/v1/models", "/v1/scenarios", "/v1/catalogue"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 401, path
        denied = httpx.get(f"{url}{path}", headers={"authorization": f"Bearer {rank}"}, timeout=30)
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied", path
        assert httpx.get(f"{url}{path}", headers={"authorization": f"Bearer {admin}"}, timeout=30).status_code == 200
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
    stub = ranker_pb2_grpc.RankerStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    request = ranker_pb2.RankRequest(user_id=3, k=2)
    with pytest.raises(grpc.RpcError) as err:
        stub.Rank(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(stub.Rank(request, metadata=[("authorization", f"Bearer {rank}")], timeout=30).items) == 2
    # a key added or revoked counts on the replica without a restart
    keys = Path(server.env["RANKSERVE_MODEL_REPOSITORY"]) / ".keys.json"
    late = add_key(keys, "late", "rank")
    wait_for(lambda: _rank(url, 2, late).status_code == 200, "a key added while serving is accepted", timeout_s=30)
    revoke_key(keys, "late")
    t0 = time.monotonic()
    wait_for(lambda: _rank(url, 2, late).status_code == 401, "a revoked key is refused", timeout_s=30)
    print(f"revoked key refused after {time.monotonic() - t0:.2f} s")


def _host_address() -> str | None:
    """An address of this machine other than loopback: where a host of the network would connect."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    return None


def _answers_without_a_key(host: str, port: int) -> list[str]:
    """What a caller without a key got from ``host:port`` that it should not have: an HTTP 2xx, or
    a request validated (400/422), or a gRPC call served."""
    wrong = []
    for method, path in (("POST", "/v1/rank"), ("GET", "/metrics"), ("GET", "/v1/models")):
        try:
            r = httpx.request(method, f"http://{host}:{port}{path}", json={"user_id": 1}, timeout=10)
        except httpx.HTTPError:
            continue  # not an HTTP/1.1 server (a gRPC one), or it closed the connection
        if r.status_code < 300 or r.status_code in (400, 422):
            wrong.append(f"{port} {method} {path}: {r.status_code}")
    channel = grpc.insecure_channel(f"{host}:{port}")
    for name in ("/rankserve.v1.Ranker/Rank", "/ray.serve.RayServeAPIService/ListApplications"):
        try:
            channel.unary_unary(name)(ranker_pb2.RankRequest(user_id=1).SerializeToString(), timeout=10)
            wrong.append(f"{port} gRPC {name}: OK")
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK):
                wrong.append(f"{port} gRPC {name}: {e.code().name}")
    channel.close()
    return wrong


def test_every_listener_beyond_loopback_refuses_a_caller_without_a_key(server: _OnTerminal) -> None:
    host = _host_address()
    if host is None:
        pytest.skip("this machine has no network interface other than loopback to probe from")
    assert server.proc is not None
    beyond = sorted({port for _, ip, port in listeners(psutil.Process(server.proc.pid)) if not is_loopback(ip)})
    assert server.port in beyond and server.grpc_port in beyond, beyond  # the API is on the network
    wrong = [w for port in beyond for w in _answers_without_a_key(host, port)]
    assert wrong == [], wrong


def test_a_killed_triton_degrades_answers_then_they_recover(server: _OnTerminal) -> None:
    """Every answer is a 200 (degraded while Triton is down) until the restarted Triton serves."""
    killed = server.pid_of("tritonserver")
    degraded: list[bool] = []

    def recovered() -> bool:
        r = _rank(server.url, len(degraded), server.rank_key)
        assert r.status_code == 200, r.text  # degraded, never failed
        degraded.append(r.json()["degraded"])
        return any(degraded) and not degraded[-1]

    with children_stopped_after(killed):
        os.kill(killed, signal.SIGKILL)
        wait_for(recovered, lambda: f"an answer not degraded after the kill: {len(degraded)} answers, "
                 f"{sum(degraded)} degraded", timeout_s=120, poll_s=0.1)
    assert server.pid_of("tritonserver") != killed


def test_a_killed_replica_is_replaced(server: _OnTerminal) -> None:
    """Serve starts another replica; answers come back (failures meanwhile are counted by
    test_chaos.py, under load)."""
    killed = server.pid_of("ray::ServeReplica")
    refused: list[httpx.Response] = []

    def answers() -> bool:
        r = _rank(server.url, 1, server.rank_key)
        if r.status_code != 200:
            refused.append(r)
        return server.pid_of("ray::ServeReplica") != killed and r.status_code == 200

    os.kill(killed, signal.SIGKILL)
    server.killed_replicas.add(killed)
    wait_for(answers, "a new replica answers", timeout_s=180, poll_s=0.5, ignoring=(httpx.HTTPError, RuntimeError))
    # meanwhile HAProxy answered itself: the API's 503, in the error shape, with Retry-After
    for r in refused:
        assert r.status_code == 503 and r.headers.get("Retry-After") == "1", (r.status_code, r.text)
        assert r.json()["error"]["code"] in ("unavailable", "overloaded"), r.text


N_LOGGED = 24


def _metric(server: _OnTerminal, sample: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"authorization": f"Bearer {server.admin_key}"}, timeout=30).text
    return metric_sum(text, sample, **labels)


def test_answers_and_events_are_counted_then_kept_by_the_stop(server: _OnTerminal) -> None:
    """Answers ranked over HTTP, events posted over HTTP and gRPC with the rank key: counted at
    once, and (the test after the stop) every one of them in the Parquet files."""
    key = {"authorization": f"Bearer {server.rank_key}"}
    impressions, dropped = _metric(server, "rankserve_impressions_total", role="live"), \
        _metric(server, "rankserve_log_dropped_total")
    answers = []
    for u in range(N_LOGGED):
        r = httpx.post(f"{server.url}/v1/rank", json={"user_id": u, "k": 5, "request_id": f"it-{u}"}, headers=key,
                       timeout=30)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    events = [{"request_id": a["request_id"], "item_id": a["items"][0]["item_id"], "type": "click"} for a in answers]
    events.append({"request_id": "never-served", "item_id": 1, "type": "cart", "ts": "2026-01-02T03:04:05Z"})
    posted = httpx.post(f"{server.url}/v1/events", json={"events": events}, headers=key, timeout=30)
    assert posted.status_code == 202 and posted.json() == {"accepted": len(events)}, posted.text
    bad = httpx.post(f"{server.url}/v1/events", json={"events": [events[0], {**events[1], "type": "view"}]},
                     headers=key, timeout=30)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "events[1].type", bad.text
    stub = ranker_pb2_grpc.RankerStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    metadata = [("authorization", f"Bearer {server.rank_key}")]
    order = ranker_pb2.Event(request_id="it-0", item_id=answers[0]["items"][1]["item_id"], type="order",
                             ts=1767225600.0)
    assert stub.Events(ranker_pb2.EventsRequest(events=[order]), metadata=metadata, timeout=30).accepted == 1
    with pytest.raises(grpc.RpcError) as refused:
        stub.Events(ranker_pb2.EventsRequest(), metadata=metadata, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    shown = sum(len(a["items"]) for a in answers)
    assert _metric(server, "rankserve_impressions_total", role="live") - impressions == shown
    assert _metric(server, "rankserve_events_total", type="click", role="live") == len(answers)
    assert _metric(server, "rankserve_events_total", role="unknown") == 1
    assert _metric(server, "rankserve_log_dropped_total") == dropped == 0
    assert not list(server.log_dir.rglob("*.parquet"))  # nothing rotated yet: the stop writes it all
    want = sorted([(e["request_id"], str(e["item_id"]), e["type"]) for e in events]
                  + [("it-0", str(order.item_id), "order")])
    server.logged = (answers, want)


def test_ctrl_c_drains_requests_in_flight_then_everything_stops(server: _OnTerminal, settings: Settings,
                                                                tmp_path: Path) -> None:
    """SIGINT to the server's whole process group, as a terminal's Ctrl-C sends it: Ray's own
    processes share the group. Requests in flight are answered; then nothing of rankserve runs."""
    assert server.proc is not None
    session = server.proc.pid
    triton = server.pid_of("tritonserver")  # a session of its own: not reached by the Ctrl-C, stopped by rankserve
    haproxy = [p.pid for p in psutil.Process(session).children(recursive=True) if p.name().startswith("haproxy")]
    bodies = write_bodies(recall_bodies(FeatureTables.load(settings.marketplace_path).n_users, 256), tmp_path)
    out = chaos._drain(server, bodies, argparse.Namespace(capacity_rps=60.0), tmp_path,
                       stop=lambda proc: os.killpg(proc.pid, signal.SIGINT))
    print(chaos.markdown([out]))
    assert out.details["exit_code"] == 0, out
    assert out.details["exit_s"] < 90, out  # a hang bound: about 7 s on a quiet machine
    assert out.details["reset_in_flight"] == 0, out  # every request sent during the drain was answered
    assert out.details["during_drain"].get("200", 0) + out.details["during_drain"].get("503", 0) > 0, out
    assert out.other_failures == out.details["reset_at_close"] and out.client_timeouts == 0, out
    left = [p.pid for p in psutil.process_iter() if _sid(p.pid) == session]
    assert left == [] and not _running(triton) and not any(_running(p) for p in haproxy), (left, triton, haproxy)
    server.term.close()
    shown = server.term.text[server.term.text.index("stopping:"):]
    assert shown.rstrip().endswith("stopped: nothing of rankserve is left running"), shown[-1000:]
    _assert_quiet(shown)
    logged = Path(server.rows["logs"].split("  (")[0]).read_bytes().decode(errors="replace")
    for chatter in ("faiss.loader", "(ServeController", "(ServeReplica", "starting Triton"):
        assert chatter in logged, chatter
    assert "\x1b[" not in logged  # Ray's colour codes stay out of the file
    # the Ray Serve warning about max_batch_size * max_concurrent_batches came from @serve.batch,
    # which rankserve no longer uses: nothing of the kind at the first request
    assert "max_batch_size" not in logged and "max_concurrent_batches" not in logged


def test_after_the_stop_every_answer_and_event_is_in_the_files(server: _OnTerminal) -> None:
    """The Ctrl-C above drained the served log and the events: every answer of the test before it,
    once, with its items, model and role; every event accepted, none of the refused call; no file
    left half-written, but those of the replica killed with SIGKILL (it could rename nothing)."""
    answers, events = server.logged
    served = pq.read_table(sorted((server.log_dir / "served").glob("*.parquet")))
    assert served.schema == SERVED_SCHEMA
    rows = served.to_pylist()
    assert len({r["request_id"] for r in rows}) == len(rows)  # no answer twice
    mine = {r["request_id"]: r for r in rows if r["request_id"].startswith("it-")}
    assert sorted(mine) == sorted(a["request_id"] for a in answers)
    for a in answers:
        r = mine[a["request_id"]]
        assert [i["item_id"] for i in r["items"]] == [str(i["item_id"]) for i in a["items"]]
        assert (r["model"], r["model_version"], r["role"]) == (a["model"]["name"], a["model"]["version"], "live")
    stored = pq.read_table(sorted((server.log_dir / "events").glob("*.parquet")))
    assert stored.schema == EVENT_SCHEMA
    assert sorted((e["request_id"], e["item_id"], e["type"]) for e in stored.to_pylist()) == events
    hidden = [p.name for p in server.log_dir.rglob(".*")]
    assert all(any(f".{pid}-" in name for pid in server.killed_replicas) for name in hidden), \
        (hidden, server.killed_replicas)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
