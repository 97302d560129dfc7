"""Benchmarks: experiments that start what they measure and report named figures.

Each one starts its own servers (Triton, Ray Serve, ``rankserve serve`` as a child process, a
multi-node Ray cluster) or runs the pipeline in-process for the floors, drives them with the load
generator of :mod:`loadtest`, and writes a report (JSON, markdown, plots) with the figures it
names: ``bench`` (floors, framework floor, rankserve with batching on and off, HTTP and gRPC;
``framework`` is the empty deployment of the framework floor), ``capacity`` (the highest rate at a
p99 target, and units for a peak), ``chaos`` (faults and overload), ``freshness`` and
``scenario_freshness`` (how fast a catalogue change or a scenario apply reaches the answers),
``index_bench`` (which item index to use), ``cluster`` (a real multi-node Ray cluster on loopback,
for the cluster tests), ``plots`` (the pictures of bench and capacity) and ``gpu`` (the GPU check).

Why a package of its own, beside :mod:`loadtest`: these measure the server from outside, so they
sit above it and never inside it. Only the ``rankserve`` command (``serving.cli``) imports them;
nothing else under ``serving`` does. Generating load and judging answers is :mod:`loadtest`'s.
"""
