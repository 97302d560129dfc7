"""After a fault a test injects: what the killed process leaves running.

Owns: stopping the children a SIGKILLed process leaves behind. Triton's python backend stubs
outlive a SIGKILLed ``tritonserver``, blocked on its shared memory, and the supervisor starts the
new server beside them: a test that kills Triton stops them, so that nothing of the test outlives
it (nor holds its terminal). Must not touch: the processes a test did not kill.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psutil

__all__ = ["children_stopped_after"]


@contextlib.contextmanager
def children_stopped_after(pid: int) -> Iterator[list[psutil.Process]]:
    """The children of ``pid`` now; after the block (which kills ``pid``), those still running
    are killed."""
    children = psutil.Process(pid).children()
    try:
        yield children
    finally:
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
