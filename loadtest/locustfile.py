"""Locust user for the ranking RPC, with a realistic request mix.

* users drawn with a Zipf-like popularity, plus ~3% unknown users (cold start);
* ~70% recall requests (no candidates), ~30% with 50-500 given candidates; k in {10, 20, 50, 100};
  some requests exclude items; a unique ``request_id`` on every call;
* each answer is checked (status, sorted, unique, at most k, exclude honoured).

Run through ``python -m loadtest.run`` (headless, bounded, with report and plots).
"""

from __future__ import annotations

import itertools
import os
import uuid

import numpy as np
from locust import FastHttpUser, between, events, task

from loadtest.shapes import ScheduledShape  # noqa: F401 - locust picks the shape class up from here


@events.init_command_line_parser.add_listener
def _options(parser):  # type: ignore[no-untyped-def]
    parser.add_argument("--shape", default="constant", choices=["constant", "step", "spike"], help="load shape")
    parser.add_argument("--shape-duration-s", type=float, default=60.0)
    parser.add_argument("--shape-users", type=int, default=8, help="users of the constant shape")
    parser.add_argument("--n-users", type=int, default=int(os.environ.get("RANKSERVE_LT_USERS", 20000)))
    parser.add_argument("--n-items", type=int, default=int(os.environ.get("RANKSERVE_LT_ITEMS", 50000)))


_ids = itertools.count()


class RankingUser(FastHttpUser):
    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.n_users = int(getattr(opts, "n_users", 20000))
        self.n_items = int(getattr(opts, "n_items", 50000))
        self.rng = np.random.default_rng(next(_ids))

    def _user(self) -> int:
        if self.rng.random() < 0.03:
            return int(self.n_users + self.rng.integers(1, 1_000_000))  # unknown: cold start
        return int((self.rng.zipf(1.3) - 1) % self.n_users)

    def _rank(self, body: dict, name: str) -> None:
        body["request_id"] = uuid.uuid4().hex
        with self.client.post("/v1/rank", json=body, name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
                return
            data = resp.json()
            items = data.get("items", [])
            ids = [it["item_id"] for it in items]
            scores = [it["score"] for it in items]
            if data.get("request_id") != body["request_id"]:
                resp.failure("request_id not echoed")
            elif len(ids) > body["k"] or len(set(ids)) != len(ids):
                resp.failure("more than k items or duplicates")
            elif scores != sorted(scores, reverse=True):
                resp.failure("items not sorted by score")
            elif set(ids) & set(body.get("exclude", [])):
                resp.failure("excluded item returned")
            elif "candidates" in body and not set(ids) <= set(body["candidates"]):
                resp.failure("item outside the given candidates")
            else:
                resp.success()

    @task(7)
    def rank_recall(self) -> None:
        body = {"user_id": self._user(), "k": int(self.rng.choice([10, 20, 50, 100]))}
        if self.rng.random() < 0.3:
            body["exclude"] = self.rng.integers(0, self.n_items, 5).tolist()
        self._rank(body, "rank:recall")

    @task(3)
    def rank_candidates(self) -> None:
        n = int(self.rng.integers(50, 501))
        cands = self.rng.choice(self.n_items, n, replace=False).tolist()
        body = {"user_id": self._user(), "k": int(self.rng.choice([10, 20, 50])), "candidates": cands}
        if self.rng.random() < 0.3:
            body["exclude"] = cands[:3]
        self._rank(body, "rank:candidates")
