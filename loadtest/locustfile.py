"""Locust users for the ranking RPC, with a realistic request mix, over HTTP or gRPC.

* users drawn with a Zipf-like popularity, plus ~3% unknown users (cold start);
* ~70% recall requests (no candidates), ~30% with 50-500 given candidates; k in {10, 20, 50, 100};
  some requests exclude items; a unique ``request_id`` on every call;
* each answer is checked against the contract (``loadtest.checks``): status, request id echoed,
  sorted, unique, ids in the catalogue (its size read again from ``GET /v1/catalogue`` when an
  answer holds a larger id: items are added while serving), no NaN, ranker scores in [0, 1], exclude and candidates
  honoured, exactly as many items as the request allows.

``RankingUser`` posts JSON to ``/v1/rank``; ``RankingGrpcUser`` calls ``rankserve.v1.Ranker/Rank``
at ``--grpc-target``; locust runs the class named on its command line. Run through
``python -m loadtest.run [--protocol grpc]`` (headless, bounded, report and plots).

Owns: the request mix and the two locust user classes. Must not touch: the report (``loadtest.run``)
or what a right answer is (``loadtest.checks``).
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
import uuid
from typing import Any

import numpy as np
from locust import FastHttpUser, User, between, events, task

from loadtest.checks import check_answer
from loadtest.shapes import ScheduledShape  # noqa: F401 - locust picks the shape class up from here


@events.init_command_line_parser.add_listener
def _options(parser):  # type: ignore[no-untyped-def]
    parser.add_argument("--shape", default="constant", choices=["constant", "step", "spike"], help="load shape")
    parser.add_argument("--shape-duration-s", type=float, default=60.0)
    parser.add_argument("--shape-users", type=int, default=8, help="users of the constant shape")
    # id ranges of the server's catalogue; ``loadtest.run`` passes them from the built tables
    parser.add_argument("--n-users", type=int, default=20000, help="known user ids are 0..n-users-1")
    parser.add_argument("--n-items", type=int, default=50000, help="item ids are 0..n-items-1")
    parser.add_argument("--grpc-target", default="127.0.0.1:9000", help="host:port of the gRPC API")


_ids = itertools.count()


class _Mix:
    """The request mix of one simulated client."""

    def __init__(self, n_users: int, n_items: int, host: str | None = None) -> None:
        self.n_users, self.n_items = n_users, n_items
        self.host = host
        self.rng = np.random.default_rng(next(_ids))

    def check(self, body: dict[str, Any], status: int | str, answer: Any) -> str | None:
        """The contract check of one answer; an id past the catalogue's size as last known is
        checked again against the size the server reports now (items are added while serving)."""
        reason = check_answer(body, status, answer, self.n_items)
        if reason is not None and reason.startswith("item id outside") and self.host:
            try:
                with urllib.request.urlopen(f"{self.host}/v1/catalogue", timeout=10) as r:
                    self.n_items = max(self.n_items, int(json.load(r)["items"]))
            except (OSError, ValueError, KeyError):
                return reason
            reason = check_answer(body, status, answer, self.n_items)
        return reason

    def _user(self) -> int:
        if self.rng.random() < 0.03:
            return int(self.n_users + self.rng.integers(1, 1_000_000))  # unknown: cold start
        return int((self.rng.zipf(1.3) - 1) % self.n_users)

    def next(self) -> tuple[str, dict[str, Any]]:
        """(kind, body) of the next request."""
        if self.rng.random() < 0.7:
            kind = "rank:recall"
            body: dict[str, Any] = {"user_id": self._user(), "k": int(self.rng.choice([10, 20, 50, 100]))}
            if self.rng.random() < 0.3:
                body["exclude"] = self.rng.integers(0, self.n_items, 5).tolist()
        else:
            kind = "rank:candidates"
            cands = self.rng.choice(self.n_items, int(self.rng.integers(50, 501)), replace=False).tolist()
            body = {"user_id": self._user(), "k": int(self.rng.choice([10, 20, 50])), "candidates": cands}
            if self.rng.random() < 0.3:
                body["exclude"] = cands[:3]
        body["request_id"] = uuid.uuid4().hex
        return kind, body


def _mix(user: User) -> _Mix:
    opts = user.environment.parsed_options
    return _Mix(int(getattr(opts, "n_users", 20000)), int(getattr(opts, "n_items", 50000)), user.environment.host)


class RankingUser(FastHttpUser):
    """HTTP/JSON client: ``POST /v1/rank``."""

    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        self.mix = _mix(self)

    @task
    def rank(self) -> None:
        kind, body = self.mix.next()
        with self.client.post("/v1/rank", json=body, name=kind, catch_response=True) as resp:
            try:
                answer = resp.json()
            except ValueError:
                answer = resp.text[:200]
            reason = self.mix.check(body, resp.status_code, answer)
            if reason is None:
                resp.success()
            else:
                resp.failure(reason)


class RankingGrpcUser(User):
    """gRPC client: ``rankserve.v1.Ranker/Rank``; each call reported to locust as a request."""

    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        import grpc
        import grpc.experimental.gevent as grpc_gevent

        from loadtest.loadgen import rank_message
        from serving.proto import ranker_pb2_grpc

        grpc_gevent.init_gevent()  # grpc's polling cooperates with locust's gevent loop
        self.mix = _mix(self)
        self._grpc, self._message = grpc, rank_message  # string ids and context as the gRPC API reads them
        self._channel = grpc.insecure_channel(self.environment.parsed_options.grpc_target)
        self._stub = ranker_pb2_grpc.RankerStub(self._channel)

    def on_stop(self) -> None:
        self._channel.close()

    @task
    def rank(self) -> None:
        from google.protobuf.json_format import MessageToDict

        kind, body = self.mix.next()
        t0 = time.perf_counter()
        status, answer, size = 200, None, 0
        try:
            res = self._stub.Rank(self._message(body), timeout=30)
            size = res.ByteSize()
            answer = MessageToDict(res, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        except self._grpc.RpcError as err:
            status, answer = err.code().name, err.details()
        reason = self.mix.check(body, status, answer)
        self.environment.events.request.fire(
            request_type="grpc", name=kind, response_time=(time.perf_counter() - t0) * 1000, response_length=size,
            exception=None if reason is None else AssertionError(reason), context={})
