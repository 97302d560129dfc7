"""Measuring tools: the load generator, the benchmark, the capacity search and the framework floor.

They drive a server from outside (or the pipeline in-process for the floors) and never run inside a
serving replica.
"""
