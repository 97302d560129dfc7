"""Stopping the way people stop things: the first Ctrl-C (or SIGTERM) asks for a drain, the second
forces, a third does not interrupt the forced stop's clean-up; while starting, a signal abandons
the start. Real signals, sent to this process."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from serving.stopping import ForcedStop, StopSignals


@pytest.fixture
def stop() -> Iterator[StopSignals]:
    s = StopSignals()
    s.install()
    try:
        yield s
    finally:
        s.restore()


def _signal_self(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs at the next bytecode of the main thread


def test_while_starting_a_signal_abandons_the_start(stop: StopSignals) -> None:
    with pytest.raises(KeyboardInterrupt):
        _signal_self(signal.SIGINT)
    assert not stop.asked and not stop.forced


def test_once_serving_the_first_asks_the_second_forces_the_third_is_ignored(stop: StopSignals) -> None:
    stop.serving()
    _signal_self(signal.SIGTERM)
    assert stop.asked and not stop.forced and stop.wait(0) is True
    with pytest.raises(ForcedStop):
        _signal_self(signal.SIGINT)
    assert stop.forced
    _signal_self(signal.SIGINT)  # the forced stop's clean-up runs on
    assert stop.forced


def test_a_signal_delivered_while_the_main_thread_waits_is_noticed(stop: StopSignals) -> None:
    """The main thread waits in slices, so the handler runs even when the kernel hands the
    signal to another thread (Ray's threads do not block SIGINT)."""
    stop.serving()
    t = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    t.start()
    t0 = time.monotonic()
    assert stop.wait(timeout_s=30) is True
    assert time.monotonic() - t0 < 10  # a hang bound: the signal comes after 0.3 s


def test_wait_times_out_when_nobody_asks(stop: StopSignals) -> None:
    stop.serving()
    assert stop.wait(timeout_s=0.3) is False and not stop.asked


def test_restore_gives_the_handlers_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    s = StopSignals()
    s.install()
    s.serving()
    assert signal.getsignal(signal.SIGINT) != before
    s.restore()
    assert signal.getsignal(signal.SIGINT) == before
