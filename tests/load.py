"""The load an integration test runs beside a change (a push, a catalogue or scenario change, a
node leaving): a closed loop of a few clients in its own process, every request and its answer
recorded, stopped by the test once the change has been seen.

Owns: starting ``loadtest.loadgen`` on a list of bodies, stopping it, reading its summary and
record. Must not touch: the server, when to stop (tests wait for what the server reports:
``tests.waiting``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Load"]


class Load:
    """``bodies`` sent to ``url``/v1/rank by ``concurrency`` clients in a closed loop, until
    :meth:`finish` (or ``duration_s``, a bound for a test that never stops it).

    A ``with`` block stops the load however the block ends.
    """

    def __init__(self, url: str, bodies: list[dict[str, Any]], work: Path, *, concurrency: int = 4,
                 duration_s: float = 180) -> None:
        work.mkdir(parents=True, exist_ok=True)
        (work / "bodies.jsonl").write_text("\n".join(json.dumps(b) for b in bodies))
        self.record, self._stop = work / "record.jsonl", work / "stop"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.loadgen", "--url", f"{url}/v1/rank", "--bodies",
             str(work / "bodies.jsonl"), "--concurrency", str(concurrency), "--duration-s", str(duration_s),
             "--warmup-s", "0", "--record", str(self.record), "--stop-file", str(self._stop)],
            stdout=subprocess.PIPE, text=True)

    def finish(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Stop the load; its summary (requests, failures, status counts) and every recorded
        request with its answer, in the order they were answered."""
        self._stop.touch()
        out, _ = self.proc.communicate(timeout=180)
        assert self.proc.returncode == 0, f"the load generator failed: {out[-2000:]}"
        rows = [json.loads(line) for line in self.record.read_text().splitlines() if line]
        return json.loads(out.strip().splitlines()[-1]), rows

    def __enter__(self) -> Load:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self._stop.touch()
            try:
                self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
