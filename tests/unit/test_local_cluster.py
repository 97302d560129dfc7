"""The local cluster of ``make cluster-test`` finds one node's processes by the resource its
raylet was given: read from the command line a Ray 2.60 raylet really has (a node loss that
matched nothing once killed nothing, and the test passed without losing a node)."""

from __future__ import annotations

from benchmarks.cluster import raylet_resources

RAYLET = ["/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet",
          "--raylet_socket_name=/tmp/ray/session_1/sockets/raylet.1", "--node_ip_address=127.0.0.1",
          "--maximum_startup_concurrency=1",
          "--static_resource_list=node1,1,node:192.0.2.2,1.0,CPU,1,memory,16070819431,object_store_memory,6887494041",
          "--python_worker_command=/venv/bin/python setup_worker.py"]


def test_a_raylet_s_resources_are_the_names_in_its_static_resource_list() -> None:
    names = raylet_resources(RAYLET)
    assert {"node1", "CPU", "memory"} <= names
    assert "node0" not in names and "1" not in names  # another node's; an amount is not a name
    assert raylet_resources(["raylet", "--node_ip_address=127.0.0.1"]) == set()
