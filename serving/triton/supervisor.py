"""Keeps the embedded Triton up: restarts it with back-off when it exits or stops answering.

Owns: the health watch of one :class:`serving.triton.process.TritonProcess` and its restarts on
the same ports (replicas' channels reconnect by themselves, and their shared-memory regions are
registered again on first use). Triton loads every version in the repository at start, so the
versions the traffic files name (live, canary, shadow) come back with it. Must not touch:
requests, the repository's files.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from serving.errors import RankserveError
from serving.triton.client import TritonClient
from serving.triton.process import TritonProcess

__all__ = ["TritonSupervisor"]

log = logging.getLogger(__name__)


class TritonSupervisor:
    """Watches ``triton`` every ``interval_s``; restarts it when its process has exited, or after
    ``failures`` liveness checks in a row went unanswered (a hung server); waits ``backoff_s``
    (doubling up to ``max_backoff_s``) between failed restarts. Liveness, not readiness: a server
    loading a pushed model is briefly not ready, and must not be restarted for it.

    Use as a context manager around a started process: ``with TritonSupervisor(triton): ...``.
    """

    def __init__(self, triton: TritonProcess, *, interval_s: float = 0.5, failures: int = 4,
                 backoff_s: float = 0.5, max_backoff_s: float = 10.0) -> None:
        self.triton = triton
        self.interval_s = interval_s
        self.failures = failures
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.restarts = 0
        self.last_restart_s: float | None = None  # how long the last recovery took
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)

    def __enter__(self) -> TritonSupervisor:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _healthy(self, client: TritonClient) -> bool:
        try:
            return self.triton.alive() and client.server_live(timeout_s=2.0)
        except RankserveError:
            return False

    def _run(self) -> None:
        client = TritonClient(self.triton.grpc_url)
        bad = 0
        try:
            while not self._stop.wait(self.interval_s):
                if self._healthy(client):
                    bad = 0
                    continue
                bad += 1
                if self.triton.alive() and bad < self.failures:
                    continue
                self._restart()
                bad = 0
        finally:
            client.close()

    def _restart(self) -> None:
        """Stop what is left of Triton and start it again until it is ready (or we are stopped)."""
        t0 = time.monotonic()
        wait = self.backoff_s
        while not self._stop.is_set():
            log.warning("Triton is down (pid %s); restarting it", self.triton.pid)
            try:
                self.triton.stop(timeout_s=5)
                self.triton.start()
            except RankserveError as err:
                log.error("Triton restart failed, next try in %.1f s: %s", wait, err.message.splitlines()[0])
                self._stop.wait(wait)
                wait = min(wait * 2, self.max_backoff_s)
                continue
            self.restarts += 1
            self.last_restart_s = time.monotonic() - t0
            log.warning("Triton restarted in %.1f s (restart %d)", self.last_restart_s, self.restarts)
            return
