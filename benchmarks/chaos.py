"""``rankserve chaos``: the embedded default under faults and overload, one row per scenario, on
the data set ``settings.data`` (``--data``: the demo, or an imported one, with requests in its own
ids: ``loadtest.workload.request_bodies``).

Owns: starting ``rankserve serve`` as a child process on free loopback ports, loading it open loop
(``loadtest.loadgen``, every request's outcome recorded), injecting each fault, and the table
that says what clients saw. Must not touch: the server's internals (faults come from outside, as
in production: signals to processes).

Scenarios, in order (the last one stops the server):

* ``overload``     open loop at 3x the unit's capacity (``--overload-factor``): the excess must get
                   fast 503s with Retry-After (HAProxy refuses it before any Python runs), admitted
                   requests their answer within their deadline, goodput near capacity;
* ``slow_clients`` ``--slow-clients`` connections send their headers and then trickle their
                   bodies, a byte a second, while a normal client asks 50 times in a row: every one
                   of its answers comes, fast (no slow client holds a replica);
* ``tampered``     a version whose file differs from its digests appears in the repository: the
                   replicas never load it (one log line), the live version keeps serving, and
                   ``rankserve verify`` fails naming the file; the version is removed afterwards;
* ``deadlines``    tight (30 ms) and generous (5 s) deadlines mixed: no generous request degraded;
* ``triton_kill``  SIGKILL of ``tritonserver``: answers degrade, never fail, then recover once the
                   supervisor has restarted it (recovery: kill to the first non-degraded answer);
* ``replica_kill`` SIGKILL of the Serve replica: Serve starts another; failures are counted;
* ``drain``        SIGTERM of ``rankserve serve``: requests in flight finish, none is reset, and the
                   process exits within the drain bound.

Columns: requests, ok (200), degraded (of the ok), 503, 504, other 5xx (and any other failure),
client time-outs, recovery seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.workload import request_bodies, write_bodies
from serving.config import DEMO_DATA, Settings
from serving.net import QUIET_PORTS, free_port

__all__ = ["ChaosServer", "Outcome", "SCENARIOS", "run_chaos"]

SCENARIOS = ("overload", "slow_clients", "tampered", "deadlines", "triton_kill", "replica_kill", "drain")


@dataclass
class Outcome:
    """What clients saw during one scenario."""

    scenario: str
    requests: int = 0
    ok: int = 0
    degraded: int = 0
    shed_503: int = 0
    deadline_504: int = 0
    other_failures: int = 0
    client_timeouts: int = 0
    recovery_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_records(cls, scenario: str, rows: list[dict[str, Any]]) -> Outcome:
        status = Counter(str(r["status"]) for r in rows)
        timeouts = status["client_timeout"] + status["error:TimeoutError"]  # unanswered within the client's time-out
        return cls(scenario, requests=len(rows), ok=status["200"], degraded=sum(bool(r["degraded"]) for r in rows),
                   shed_503=status["503"], deadline_504=status["504"], client_timeouts=timeouts,
                   other_failures=len(rows) - status["200"] - status["503"] - status["504"] - timeouts)


class ChaosServer:
    """``rankserve serve --no-build`` as a child process on free loopback ports."""

    def __init__(self, settings: Settings, log_path: Path, env: dict[str, str] | None = None,
                 key_file: Path | None = None) -> None:
        self.key_file = key_file  # the API key the load sends (a server with RANKSERVE_AUTH=keys)
        self.port = free_port(QUIET_PORTS)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # RANKSERVE_VERBOSE: the whole server log in log_path (Ray's, Triton's), not only its screen
        own = {"RANKSERVE_PORT": str(self.port), "RANKSERVE_GRPC_PORT": "0", "RANKSERVE_VERBOSE": "true",
               "RANKSERVE_DATA_DIR": str(settings.data_dir), "RANKSERVE_MODEL_REPOSITORY": str(settings.model_repository),
               "RANKSERVE_DATA": settings.data}
        if settings.log_dir is not None:  # the served log where these settings put it (a measuring run's scratch)
            own["RANKSERVE_LOG_DIR"] = str(settings.log_dir)
        self.env = {**os.environ, **(env or {}), **own}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> ChaosServer:
        cmd = [sys.executable, "-m", "serving.cli", "serve", "--no-build"]
        setpriv = shutil.which("setpriv")
        if setpriv:  # Ctrl-C for the server when chaos itself dies: no server outlives its run
            cmd = [setpriv, "--pdeathsig", "INT", "--", *cmd]
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=logf, stderr=subprocess.STDOUT)
        if not self.wait_ready(timeout_s):
            self.stop()
            raise RuntimeError(f"rankserve did not become ready; see {self.log_path}")
        return self

    def wait_ready(self, timeout_s: float) -> bool:
        import httpx

        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return False

    def pid_of(self, prefix: str) -> int:
        """The pid of the first descendant whose process name starts with ``prefix``."""
        import psutil

        assert self.proc is not None
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if p.name().startswith(prefix):
                    return int(p.pid)
            except psutil.NoSuchProcess:
                continue
        raise RuntimeError(f"no {prefix!r} process under rankserve serve")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass(frozen=True)
class _Load:
    """An open-loop load in its own process, recording every request's outcome."""

    proc: subprocess.Popen[str]
    record: Path

    @classmethod
    def start(cls, url: str, bodies: Path, rate: float, duration_s: float, record: Path,
              timeout_s: float = 10.0, key_file: Path | None = None) -> _Load:
        cmd = [sys.executable, "-m", "loadtest.loadgen", "--url", f"{url}/v1/rank", "--bodies", str(bodies),
               "--rate", f"{rate:.2f}", "--duration-s", str(duration_s), "--warmup-s", "0", "--concurrency", "1024",
               "--client-timeout-s", str(timeout_s), "--record", str(record)]
        if key_file is not None:
            cmd += ["--key-file", str(key_file)]
        return cls(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), record)

    def rows(self) -> list[dict[str, Any]]:
        out, err = self.proc.communicate(timeout=300)
        if self.proc.returncode != 0:
            raise RuntimeError(f"load generator failed: {err[-2000:]}")
        return [json.loads(ln) for ln in self.record.read_text().splitlines() if ln]


def _recovery_s(rows: list[dict[str, Any]], fault_at: float) -> float | None:
    """Seconds from the fault to the arrival of the first request after which every answer is
    ok and not degraded (None: it never recovered within the run)."""
    after = sorted((r for r in rows if r["at"] is not None and r["at"] >= fault_at), key=lambda r: r["at"])
    good_from = None
    for r in after:
        if r["status"] == 200 and not r["degraded"]:
            good_from = r["at"] if good_from is None else good_from
        else:
            good_from = None
    return None if good_from is None else round(good_from - fault_at, 2)


def _with_fault(server: ChaosServer, bodies: Path, rate: float, duration_s: float, work: Path,
                name: str, fault_after_s: float, fault: Any) -> tuple[list[dict[str, Any]], float]:
    load = _Load.start(server.url, bodies, rate, duration_s, work / f"{name}.jsonl", key_file=server.key_file)
    time.sleep(fault_after_s)
    fault_at = time.time()
    fault()
    return load.rows(), fault_at


def _overload(server: ChaosServer, bodies: Path, a: argparse.Namespace, work: Path) -> Outcome:
    rate = a.overload_factor * a.capacity_rps
    rows = _Load.start(server.url, bodies, rate, a.duration_s, work / "overload.jsonl").rows()
    out = Outcome.from_records("overload", rows)
    shed = [r["ms"] for r in rows if r["status"] == 503]
    ok_ms = [r["ms"] for r in rows if r["status"] == 200]
    retry_after = sum(1 for r in rows if r["status"] == 503 and r.get("retry_after"))
    out.details = {"offered_rps": rate, "capacity_rps": a.capacity_rps,
                   "p99_503_ms": round(float(np.percentile(shed, 99)), 1) if shed else None,
                   "503_with_retry_after": retry_after,
                   "p99_ok_ms": round(float(np.percentile(ok_ms, 99)), 1) if ok_ms else None,
                   "ok_beyond_deadline": sum(ms > 2000 for ms in ok_ms),
                   "goodput_vs_capacity": round(out.ok / a.duration_s / a.capacity_rps, 3)}
    return out


def _deadlines(server: ChaosServer, bodies: Path, a: argparse.Namespace, work: Path) -> Outcome:
    lines = [json.loads(b) for b in bodies.read_text().splitlines()]
    mixed = work / "mixed.jsonl"
    mixed.write_text("\n".join(json.dumps({**b, "timeout_ms": 30 if i % 2 else 5000}) for i, b in enumerate(lines)))
    rows = _Load.start(server.url, mixed, 0.6 * a.capacity_rps, a.duration_s, work / "deadlines.jsonl").rows()
    out = Outcome.from_records("deadlines", rows)
    generous = [r for r in rows if r.get("timeout_ms") == 5000]
    tight = [r for r in rows if r.get("timeout_ms") == 30]
    out.details = {"generous": len(generous), "generous_degraded": sum(bool(r["degraded"]) for r in generous),
                   "generous_failed": sum(r["status"] != 200 for r in generous),
                   "tight_ok": sum(r["status"] == 200 for r in tight), "tight_504": sum(r["status"] == 504 for r in tight)}
    return out


def _kill(name: str, process: str, tail_s: float) -> Callable[[ChaosServer, Path, argparse.Namespace, Path], Outcome]:
    """A scenario: SIGKILL the server's ``process`` 2 s into load at half capacity, then keep the
    load on for ``duration_s + tail_s`` in all; records the recovery time."""
    def run(server: ChaosServer, bodies: Path, a: argparse.Namespace, work: Path) -> Outcome:
        pid = server.pid_of(process)
        rows, fault_at = _with_fault(server, bodies, 0.5 * a.capacity_rps, a.duration_s + tail_s, work, name,
                                     2.0, lambda: os.kill(pid, signal.SIGKILL))
        out = Outcome.from_records(name, rows)
        out.recovery_s = _recovery_s(rows, fault_at)
        return out
    return run


_triton_kill = _kill("triton_kill", "tritonserver", 10)
_replica_kill = _kill("replica_kill", "ray::ServeReplica", 15)


def _drain(server: ChaosServer, bodies: Path, a: argparse.Namespace, work: Path,
           stop: Callable[[subprocess.Popen[bytes]], None] | None = None) -> Outcome:
    """``stop`` (default: SIGTERM to the server) 2 s into load at half capacity."""
    assert server.proc is not None
    proc = server.proc
    t_exit: list[float] = []

    def term() -> None:
        t0 = time.monotonic()
        if stop is None:
            proc.send_signal(signal.SIGTERM)
        else:
            stop(proc)
        proc.wait(timeout=120)
        t_exit.append(time.monotonic() - t0)

    rows, fault_at = _with_fault(server, bodies, 0.5 * a.capacity_rps, 6.0, work, "drain", 2.0, term)
    # once the drain is over the listener closes and connections are refused: the end of the run,
    # not a failure; what counts is what happened before that
    refused = sorted(r["at"] for r in rows if r["status"] == "error:ClientConnectorError" and r["at"] is not None)
    closed_at = refused[0] if refused else float("inf")
    served = [r for r in rows if r["at"] is not None and r["at"] < closed_at]
    out = Outcome.from_records("drain", served)
    # a request sent on an idle keep-alive connection at the instant the listener closes can find
    # it closed: that is the close itself, not a request the drain dropped; in-flight ones are those
    # sent while the listener was still answering
    resets = [r for r in served if str(r["status"]).startswith("error:")]
    out.details = {"exit_s": round(t_exit[0], 2) if t_exit else None, "exit_code": proc.returncode,
                   "drain_s": round(closed_at - fault_at, 2) if refused else None,
                   "during_drain": dict(Counter(str(r["status"]) for r in served if r["at"] >= fault_at)),
                   "reset_in_flight": sum(r["at"] < closed_at - 0.02 for r in resets),
                   "reset_at_close": sum(r["at"] >= closed_at - 0.02 for r in resets),
                   "refused_after_close": len(refused)}
    return out


async def _trickle(host: str, port: int, n: int, hold_s: float) -> int:
    """``n`` connections that send their headers and then one body byte a second for ``hold_s``;
    returns how many were still open at the end (HAProxy closes them at its read time-out)."""
    import asyncio

    async def one() -> bool:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"POST /v1/rank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                         "Content-Length: 4096\r\n\r\n".encode())
            t_end = time.monotonic() + hold_s
            while time.monotonic() < t_end:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(1.0)
            writer.close()
            return True
        except OSError:
            return False  # closed by the server: the read time-out at work

    return sum(await asyncio.gather(*(one() for _ in range(n))))


def _slow_clients(server: ChaosServer, bodies: Path, a: argparse.Namespace, work: Path) -> Outcome:
    import asyncio
    import threading

    import httpx

    body = bodies.read_text().splitlines()[0]
    held: list[int] = []
    t = threading.Thread(target=lambda: held.append(asyncio.run(_trickle("127.0.0.1", server.port, a.slow_clients,
                                                                             a.duration_s))), daemon=True)
    t.start()
    time.sleep(2.0)  # the slow ones are connected and trickling
    rows: list[dict[str, Any]] = []
    with httpx.Client(timeout=10) as client:
        for _ in range(50):
            t0 = time.perf_counter()
            try:
                r = client.post(f"{server.url}/v1/rank", content=body, headers={"content-type": "application/json"})
                status: Any = r.status_code
                degraded = bool(r.json().get("degraded")) if r.status_code == 200 else False
            except httpx.HTTPError as err:
                status, degraded = f"error:{type(err).__name__}", False
            rows.append({"status": status, "degraded": degraded, "ms": (time.perf_counter() - t0) * 1000})
    t.join(timeout=a.duration_s + 30)
    out = Outcome.from_records("slow_clients", rows)
    ms = [r["ms"] for r in rows]
    out.details = {"slow_connections": a.slow_clients, "normal_p99_ms": round(float(np.percentile(ms, 99)), 1),
                   "slow_still_open_at_end": held[0] if held else None}
    return out


def _tampered(server: ChaosServer, bodies: Path, a: argparse.Namespace, work: Path) -> Outcome:
    """A copy of the live ranker version with one file changed appears as the next version."""
    from serving.repository.registry import ModelRegistry

    repo = Path(server.env["RANKSERVE_MODEL_REPOSITORY"])
    reg = ModelRegistry(repo)
    live = reg.traffic("ranker").live
    bad = repo / "ranker" / str(max(reg.versions("ranker")) + 1)
    hidden = bad.with_name(f".chaos-{bad.name}")
    shutil.copytree(repo / "ranker" / str(live), hidden, ignore=shutil.ignore_patterns("__pycache__"))
    with open(hidden / "model.pt", "ab") as f:
        f.write(b"tampered")
    log_before = server.log_path.stat().st_size
    try:
        rows, _ = _with_fault(server, bodies, 0.5 * a.capacity_rps, a.duration_s, work, "tampered", 2.0,
                              lambda: hidden.rename(bad))
        verify = subprocess.run([sys.executable, "-m", "serving.cli", "verify"], env=server.env, capture_output=True,
                                text=True, timeout=120, check=False)
    finally:
        shutil.rmtree(bad, ignore_errors=True)
        shutil.rmtree(hidden, ignore_errors=True)
    with open(server.log_path, "rb") as f:
        f.seek(log_before)
        refused = sum(1 for ln in f.read().decode(errors="replace").splitlines()
                      if "version_refused" in ln and f'"version": {bad.name}' in ln)
    out = Outcome.from_records("tampered", rows)
    served = Counter(int(r["version"]) for r in rows if r.get("version") is not None)
    out.details = {"tampered_version": int(bad.name), "refused_log_lines": refused,
                   "answers_by_version": {str(k): v for k, v in sorted(served.items())},
                   "verify_exit": verify.returncode, "verify_names_the_file": f"ranker/{bad.name}/model.pt" in verify.stdout}
    return out


_RUNNERS = {"overload": _overload, "slow_clients": _slow_clients, "tampered": _tampered, "deadlines": _deadlines,
            "triton_kill": _triton_kill, "replica_kill": _replica_kill, "drain": _drain}


def run_chaos(settings: Settings, a: argparse.Namespace) -> list[Outcome]:
    """Start a server, run the chosen scenarios in order, stop it; write and print the table."""
    a.out.mkdir(parents=True, exist_ok=True)
    bodies = write_bodies(request_bodies(settings, 4096), a.out)
    server = ChaosServer(settings, a.out / "serve.log").start()
    outcomes = []
    try:
        for name in a.scenarios:
            out = _RUNNERS[name](server, bodies, a, a.out)
            outcomes.append(out)
            print(_row(out), flush=True)
            if name != "drain" and not server.wait_ready(120):
                raise RuntimeError(f"rankserve did not come back after {name}; see {server.log_path}")
    finally:
        server.stop()
    (a.out / "chaos.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    md = markdown(outcomes)
    (a.out / "chaos.md").write_text(md)
    print(md)
    return outcomes


def _row(o: Outcome) -> str:
    rec = "-" if o.recovery_s is None else f"{o.recovery_s:.1f}"
    return (f"| {o.scenario} | {o.requests} | {o.ok} | {o.degraded} | {o.shed_503} | {o.deadline_504} | "
            f"{o.other_failures} | {o.client_timeouts} | {rec} | {json.dumps(o.details) if o.details else ''} |")


def markdown(outcomes: list[Outcome]) -> str:
    head = ("| scenario | requests | ok | degraded | 503 | 504 | other failures | client time-outs | recovery s "
            "| details |\n|---|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *(_row(o) for o in outcomes)]) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenarios", type=lambda v: [s for s in v.split(",") if s], default=list(SCENARIOS),
                   help=f"comma-separated, in order: {','.join(SCENARIOS)} (drain stops the server: last)")
    p.add_argument("--capacity-rps", type=float, default=None,
                   help="the unit's capacity (default: bench/capacity/capacity.json of `rankserve capacity` when it "
                        "measured the same data set, else 200)")
    p.add_argument("--duration-s", type=float, default=15.0, help="seconds of load per scenario")
    p.add_argument("--overload-factor", type=float, default=3.0, help="overload's offered rate, times the capacity")
    p.add_argument("--slow-clients", type=int, default=300, help="slow_clients' trickling connections")
    p.add_argument("--out", type=Path, default=Path("bench/chaos"), help="output directory")


def resolve_capacity(a: argparse.Namespace, data_set: str = DEMO_DATA,
                     report: Path = Path("bench/capacity/capacity.json")) -> float:
    """The capacity to size the load by: the flag, the last capacity report when it measured
    ``data_set`` (a report that names none measured the demo), or 200 req/s."""
    if a.capacity_rps:
        return float(a.capacity_rps)
    if report.is_file():
        measured = json.loads(report.read_text())
        cap = float(measured.get("capacity_rps", 0.0))
        if cap > 0 and measured.get("data_set", DEMO_DATA) == data_set:
            return cap
    return 200.0
