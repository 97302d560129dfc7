"""Measuring tools: the load generator, the benchmark, the capacity search, the framework floor, and
the GPU check (``gpu_check`` with its carry, sweep, probes and report) for a lent GPU machine.

They drive a server from outside (or the pipeline in-process for the floors) and never run inside a
serving replica.
"""
