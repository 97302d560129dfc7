"""Load generation: sending requests to a running rankserve and judging what comes back.

Two generators live here, with what they use: the locust load test for people (``run``,
``locustfile``, ``shapes``, ``schedule``: a bounded headless run, every answer judged by the API
contract in ``checks``, a report and plots) and the closed-loop / open-loop generator
(``loadgen``, run as its own process through ``workload``, which also writes the request bodies it
cycles through and scrapes the server's counters) that drives the benchmarks: bench, capacity,
chaos, and the load of several integration tests.

Why a package of its own, beside :mod:`benchmarks`: generating load and judging answers is the
same work whoever asks for it; the experiments that start servers and name figures are
:mod:`benchmarks`'. Both sit above the server: nothing under ``serving`` imports this package,
and locust runs only as its own process (its gevent patching cannot share a process with Ray).
"""
