"""The served log and the events with the real server: `rankserve serve --no-build` in a session of
its own, ranked over HTTP, events posted over HTTP and gRPC, stopped as a terminal's Ctrl-C stops
it (SIGINT to its whole process group), and every record and event read back from the Parquet
files. The files rotate only after an hour here, so what is on disk after the stop is what the
drain wrote."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pyarrow.parquet as pq
import pytest

from benchmarks.chaos import ChaosServer
from serving.config import Settings
from serving.feedback.events import EVENT_SCHEMA
from serving.feedback.served import SERVED_SCHEMA
from serving.net import QUIET_PORTS, free_port
from serving.proto import ranker_pb2, ranker_pb2_grpc
from tests.waiting import metric

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N_REQUESTS = 24


class _Session(ChaosServer):
    """``rankserve serve --no-build`` in a session of its own (its process group is what a Ctrl-C
    signals), logging into ``log_dir``, gRPC on, on a copy of the model repository: the service's
    metrics sum every replica that shares a repository, and the suite's other servers share the
    session's."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.log_dir = tmp_path / "log"
        repo = tmp_path / "model_repository"
        shutil.copytree(settings.model_repository, repo, ignore=shutil.ignore_patterns(".*", "catalogue"))
        settings = settings.model_copy(update={"model_repository": repo})
        super().__init__(settings, tmp_path / "serve.log", env={"RANKSERVE_LOG_DIR": str(self.log_dir),
                                                                 "RANKSERVE_LOG_ROTATE_S": "3600"})
        self.grpc_port = free_port(QUIET_PORTS)
        self.env["RANKSERVE_GRPC_PORT"] = str(self.grpc_port)

    def start(self, timeout_s: float = 240.0) -> _Session:
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", "--no-build"], cwd=ROOT,
                                         env=self.env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        if not self.wait_ready(timeout_s):
            self.stop()
            raise RuntimeError(f"rankserve did not become ready; see {self.log_path}")
        return self

    def ctrl_c(self, timeout_s: float = 120.0) -> int:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=timeout_s)


def test_a_ctrl_c_loses_no_served_record_and_no_event(settings: Settings, tmp_path: Path) -> None:
    srv = _Session(settings, tmp_path).start()
    try:
        answers = []
        for u in range(N_REQUESTS):
            r = httpx.post(f"{srv.url}/v1/rank", json={"user_id": u, "k": 5, "request_id": f"it-{u}"}, timeout=30)
            assert r.status_code == 200, r.text
            answers.append(r.json())
        events = [{"request_id": a["request_id"], "item_id": a["items"][0]["item_id"], "type": "click"} for a in answers]
        events.append({"request_id": "never-served", "item_id": 1, "type": "cart", "ts": "2026-01-02T03:04:05Z"})
        posted = httpx.post(f"{srv.url}/v1/events", json={"events": events}, timeout=30)
        assert posted.status_code == 202 and posted.json() == {"accepted": len(events)}, posted.text
        bad = httpx.post(f"{srv.url}/v1/events", json={"events": [events[0], {**events[1], "type": "view"}]},
                         timeout=30)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "events[1].type", bad.text
        stub = ranker_pb2_grpc.RankerStub(grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}"))
        got = stub.Events(ranker_pb2.EventsRequest(events=[ranker_pb2.Event(
            request_id="it-0", item_id=answers[0]["items"][1]["item_id"], type="order", ts=1767225600.0)]), timeout=30)
        assert got.accepted == 1
        with pytest.raises(grpc.RpcError) as refused:
            stub.Events(ranker_pb2.EventsRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert metric(srv.url, "rankserve_impressions_total", role="live") == sum(len(a["items"]) for a in answers)
        assert metric(srv.url, "rankserve_events_total", type="click", role="live") == len(answers)
        assert metric(srv.url, "rankserve_events_total", role="unknown") == 1
        assert metric(srv.url, "rankserve_log_dropped_total") == 0
        assert not list(srv.log_dir.rglob("*.parquet"))  # nothing rotated yet: the stop writes it all
        assert srv.ctrl_c() == 0
    finally:
        srv.stop()
    served = pq.read_table(sorted((srv.log_dir / "served").glob("*.parquet")))
    assert served.schema == SERVED_SCHEMA
    rows = {r["request_id"]: r for r in served.to_pylist()}
    assert sorted(rows) == sorted(a["request_id"] for a in answers)  # every answer, once
    for a in answers:
        r = rows[a["request_id"]]
        assert [i["item_id"] for i in r["items"]] == [str(i["item_id"]) for i in a["items"]]
        assert (r["model"], r["model_version"], r["role"]) == (a["model"]["name"], a["model"]["version"], "live")
    stored = pq.read_table(sorted((srv.log_dir / "events").glob("*.parquet")))
    assert stored.schema == EVENT_SCHEMA
    got_events = sorted((e["request_id"], e["item_id"], e["type"]) for e in stored.to_pylist())
    want = [(e["request_id"], str(e["item_id"]), e["type"]) for e in events]
    want.append(("it-0", str(answers[0]["items"][1]["item_id"]), "order"))
    assert got_events == sorted(want)  # every event accepted, none of the refused call
    assert not [p for p in srv.log_dir.rglob(".*")]  # no file left half-written
