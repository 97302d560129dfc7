"""Crossing stage: the kernel backend chosen once at start-up, applied per ranker version.

Owns: the choice of crossing backend for this process. Must not touch: the kernels' internals
(``kernels.dispatch`` decides what can run), models, Triton.
"""

from __future__ import annotations

import logging

import numpy as np

from kernels import Crosser, CrossSpec, KernelBackendError, get_crosser
from serving.errors import ConfigError
from serving.pipeline.features import FeatureTables, RankerInputs, ranker_inputs

__all__ = ["CrossingStage"]

log = logging.getLogger(__name__)


class CrossingStage:
    """Builds ranker inputs for many (user, item) pairs in one kernel launch.

    Args:
        tables: the feature tables.
        backend: ``auto`` or a backend name.

    Raises:
        ConfigError: a forced backend cannot run here (or none can), with the reason.
    """

    def __init__(self, tables: FeatureTables, backend: str = "auto") -> None:
        try:
            self.crosser: Crosser = get_crosser(backend)
        except KernelBackendError as err:
            raise ConfigError(f"RANKSERVE_CROSS_BACKEND={backend}: {err}") from err
        # One call on the real (read-only) tables before the first request: Numba compiles a kernel
        # per array layout and read-only tables are another layout (~1 s on the first request
        # otherwise), and the GPU backends copy the tables to the device here.
        one = np.zeros(1, dtype=np.int64)
        self.inputs(tables, one, one, CrossSpec(pairs=((0, 0),), buckets=2, dense_dim=tables.user_dense.shape[1]))
        log.info("crossing backend: %s", self.crosser.backend)

    @property
    def backend(self) -> str:
        return self.crosser.backend

    def inputs(self, tables: FeatureTables, user_rows: np.ndarray, item_rows: np.ndarray,
               spec: CrossSpec) -> RankerInputs:
        """Ranker inputs of the pairs, from ``tables`` (the batch's catalogue)."""
        return ranker_inputs(tables, user_rows, item_rows, self.crosser, spec)
