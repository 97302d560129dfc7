"""Waiting in tests for a condition, never for a fixed time.

Owns: polling a condition until it holds, within a generous bound that only stops a hang (it is
not a measure: ``make bench``, ``freshness`` and ``chaos`` measure), and failing with what never
happened; reading a server's ``/metrics``, so that a test can wait for what the server reports
(the versions it serves, how many requests it has answered) instead of sleeping. Must not touch:
servers (tests start them), what a test asserts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["answered", "metric", "wait_for", "wait_for_answers"]

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str | Callable[[], str], *, timeout_s: float = 60.0,
             poll_s: float = 0.2, ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Poll ``condition`` until it returns a true value, and return that value.

    Args:
        condition: what to check; called at once, then every ``poll_s``.
        what: the awaited event in words (or a function that says it, with the state it saw),
            for the failure message.
        timeout_s: the hang bound: generous, tens of seconds, many times the expected wait.
        poll_s: pause between checks.
        ignoring: exceptions that mean "not yet" (a server still starting refuses connections).

    Raises:
        AssertionError: ``what`` did not happen within ``timeout_s``.
    """
    t_end = time.monotonic() + timeout_s
    while True:
        try:
            got = condition()
        except ignoring:
            got = None
        if got:
            return got
        if time.monotonic() >= t_end:
            said = what() if callable(what) else what
            raise AssertionError(f"never happened within {timeout_s:g} s: {said}")
        time.sleep(poll_s)


def metric(url: str, sample: str, **labels: str) -> float:
    """The sum of the ``sample`` lines on ``url``'s ``/metrics`` whose labels include ``labels``
    (0.0 where there is none)."""
    return metric_sum(httpx.get(f"{url}/metrics", timeout=30).text, sample, **labels)


def metric_sum(text: str, sample: str, **labels: str) -> float:
    """The sum of the ``sample`` lines of the exposition ``text`` whose labels include ``labels``."""
    return sum(float(s.value) for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == sample and labels.items() <= s.labels.items())


def answered(url: str) -> float:
    """Requests the server at ``url`` has answered so far (any status, every replica)."""
    return metric(url, "rankserve_requests_total")


def wait_for_answers(url: str, n: int, timeout_s: float = 60.0) -> None:
    """Wait until the server at ``url`` has answered ``n`` more requests than it had at the call:
    the load a test runs beside a change has seen the state the change left."""
    start = answered(url)
    wait_for(lambda: answered(url) >= start + n, lambda: f"{n} more answers from {url} (the load stalled: "
             f"{answered(url) - start:.0f} of {n})", timeout_s=timeout_s)
