"""What the two freshness benchmarks share: changes timed under a closed-loop load, the load's
figures, the report's printing and writing, and their flags; against a small local HTTP server whose
answers carry the version of the last change."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from benchmarks import freshness, scenario_freshness
from benchmarks.freshness import first_answer_delays, load_figures, publish, spread_ms, timed_changes


class _Versioned(BaseHTTPRequestHandler):
    """``POST /v1/rank`` answers ``{"catalogue_version": N}`` (the server's ``version``), or 503 while
    the server's ``failing`` is set."""

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        self.rfile.read(int(self.headers.get("content-length", 0)))
        server: Any = self.server
        status, body = (503, b"{}") if server.failing else (200, json.dumps(
            {"catalogue_version": server.version}).encode())
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Any]:
    httpd: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Versioned)
    httpd.version, httpd.failing = 0, False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def test_each_change_is_timed_to_the_first_answer_carrying_it(server: Any) -> None:
    seen: list[tuple[float, int]] = []
    written: list[tuple[int, float]] = []
    warmed: list[float] = []

    async def warm() -> None:
        warmed.append(time.monotonic())

    async def change(i: int) -> None:
        server.version = i + 1
        written.append((i + 1, time.monotonic()))

    figures = asyncio.run(timed_changes(server.url, [{"user_id": 1}], lambda t, a: seen.append(
        (t, int(a["catalogue_version"]))), change, changes=3, gap_s=0.1, concurrency=2, settle_s=0.1, warm=warm))
    assert len(warmed) == 1 and warmed[0] < written[0][1]
    assert [v for v, _ in written] == [1, 2, 3]
    assert figures["failed"] == 0 and figures["requests"] == len(seen) > 0 and figures["rps"] > 0
    assert (figures["concurrency"], figures["gap_s"]) == (2, 0.1)
    delays = first_answer_delays(written, seen)
    assert len(delays) == 3 and all(0 <= d < 1.0 for d in delays), delays


def test_refused_requests_count_as_failed_and_reach_no_answer(server: Any) -> None:
    server.failing = True
    seen: list[Any] = []

    async def change(i: int) -> None:
        pass

    figures = asyncio.run(timed_changes(server.url, [{"user_id": 1}], lambda t, a: seen.append(a), change,
                                        changes=1, gap_s=0.0, concurrency=1, settle_s=0.0))
    assert seen == [] and figures["failed"] == figures["requests"] > 0 and figures["rps"] == 0
    assert load_figures({**figures, "rps": 12.345}) == {"requests": figures["requests"], "failed": figures["failed"],
                                                        "rps": 12.3, "concurrency": 1}


def test_publish_prints_the_report_then_its_summary_and_writes_it(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    async def measure() -> dict[str, Any]:
        return {"p50_s": 0.1234, "p90_s": 0.5, "max_s": 1.0}

    def report(raw: dict[str, Any], *, unit: str) -> dict[str, Any]:
        return {**raw, "unit": unit}

    out = tmp_path / "rep.json"
    rep = publish(measure(), report, lambda r: f"spread {spread_ms(r)}", unit="here", out=out)
    assert rep == {"p50_s": 0.1234, "p90_s": 0.5, "max_s": 1.0, "unit": "here"}
    assert json.loads(out.read_text()) == rep
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == "spread p50 123 ms, p90 500 ms, max 1000 ms"
    assert json.loads("\n".join(printed[:-1])) == rep


@pytest.mark.parametrize(("module", "argv", "want"), [
    (freshness, [], {"changes": 100, "gap_s": 0.3, "concurrency": 8, "items": None, "out": None}),
    (scenario_freshness, ["--applies", "5", "--gap-s", "1"],
     {"applies": 5, "gap_s": 1.0, "concurrency": 8, "replicas": 1, "out": None}),
])
def test_both_benchmarks_take_their_count_gap_load_and_report_flags(module: Any, argv: list[str],
                                                                    want: dict[str, Any]) -> None:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    assert vars(p.parse_args(argv)) == want
