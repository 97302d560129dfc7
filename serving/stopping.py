"""How a running ``rankserve serve`` is told to stop: the first Ctrl-C (or SIGTERM) drains, the second forces.

Owns: the serving process's SIGINT and SIGTERM handlers and the wait for them. Must not touch:
what stopping does (the CLI drains, then stops Ray and Triton).

A terminal's Ctrl-C sends SIGINT to every process of its foreground process group. Ray starts
its own processes with SIGINT blocked, so only rankserve's process acts on it; but the kernel may
run a process-wide signal's handler on any thread that does not block it, and Ray's threads do
not. Python then runs the Python-level handler only when the main thread next executes bytecode,
which a main thread asleep in ``Event.wait()`` (no time-out) never does: the stop was asked and
nobody noticed. So the main thread waits in short slices (:meth:`StopSignals.wait`), and every
blocking call of the stop path has a bound.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

__all__ = ["ForcedStop", "StopSignals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SLICE_S = 0.2  # how long the main thread sleeps between looks at the stop request


class ForcedStop(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM while stopping: stop now, skipping what is left of the drain."""


class StopSignals:
    """The serving process's stop request.

    While starting (before :meth:`serving`), SIGINT or SIGTERM raises ``KeyboardInterrupt``: the
    start-up is abandoned and what it started is stopped by the context managers that started it.
    Once serving, the first one sets the request (the caller drains), and the second raises
    :class:`ForcedStop` in the main thread (a ``KeyboardInterrupt``, so clean-up still runs,
    without waiting for the drain).
    """

    def __init__(self) -> None:
        self._asked = threading.Event()
        self._serving = False
        self.forced = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take over SIGINT and SIGTERM. Also when the process started with SIGINT ignored (a
        background job of a non-interactive shell): whoever runs rankserve may still stop it."""
        for sig in _SIGNALS:
            previous = signal.signal(sig, self._on_signal)
            self._previous.setdefault(sig, previous)

    def serving(self) -> None:
        """Start-up is over: from now on a signal asks for a drain. Installs the handlers again,
        since Ray's start-up installs handlers of its own."""
        self._serving = True
        self.install()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self._serving:
            raise KeyboardInterrupt(f"{name} while starting")
        if self.forced:  # already stopping at once: let that clean-up finish
            return
        if self._asked.is_set():
            self.forced = True
            raise ForcedStop(f"{name} again: stopping now")
        self._asked.set()

    @property
    def asked(self) -> bool:
        """True once a stop was asked."""
        return self._asked.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until a stop is asked (at most ``timeout_s``); True when it was.

        Sleeps in short slices so that the main thread runs the signal handler promptly,
        whichever thread the kernel delivered the signal to.
        """
        t_end = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._asked.wait(_SLICE_S):
            if t_end is not None and time.monotonic() >= t_end:
                return False
        return True
