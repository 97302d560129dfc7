"""Crossing stage: the kernel backend chosen once at start-up, and the feature plan of each ranker version.

Owns: the choice of assembly backend for this process, and which plan a ranker version is served
with (:func:`version_plan`). Must not touch: the kernels' internals (``kernels.dispatch`` decides
what can run), the declaration's grammar (``serving.data.features``), models, Triton.

A ranker version's inputs come from its ``features.yaml`` resolved against the served data set;
a version without one (the demo's) from the crossing spec its ``meta.json`` records, laid out as
the demo ranker was trained (the plan of ``serving/data/demo_features.yaml`` for the demo's spec),
else from ``serving/data/demo_features.yaml`` itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kernels import Crosser, CrossSpec, FeaturePlan, KernelBackendError, get_crosser
from kernels.spec import SIDE_ITEM, cat_column
from serving.data.assembly import ContextColumns, EncodedContextLike, assemble_features, request_side
from serving.data.features import DEMO_FEATURES, load_features, resolve
from serving.data.tables import DataTables
from serving.errors import ConfigError
from serving.pipeline.features import RankerInputs, cross_spec_plan

__all__ = ["FEATURES_YAML", "CrossingStage", "version_plan"]

log = logging.getLogger(__name__)

FEATURES_YAML = "features.yaml"  # a ranker version's feature declaration, beside its model


def version_plan(tables: DataTables, version_dir: Path, spec: CrossSpec | None) -> FeaturePlan:
    """The plan a ranker version is served with (see the module docstring).

    Raises:
        FeaturesError: its declaration cannot be read or does not resolve against ``tables``.
    """
    declared = Path(version_dir) / FEATURES_YAML
    if declared.is_file():
        return resolve(load_features(declared), tables)
    if spec is not None:
        return cross_spec_plan(tables, spec)
    return resolve(load_features(DEMO_FEATURES), tables)


class CrossingStage:
    """Builds ranker inputs for many (request, item) pairs in one kernel launch.

    Args:
        tables: the data set's tables.
        backend: ``auto`` or a backend name.

    Raises:
        ConfigError: a forced backend cannot run here (or none can), with the reason.
    """

    def __init__(self, tables: DataTables, backend: str = "auto") -> None:
        try:
            self.crosser: Crosser = get_crosser(backend)
        except KernelBackendError as err:
            raise ConfigError(f"RANKSERVE_CROSS_BACKEND={backend}: {err}") from err
        self._plans: dict[tuple[str, int], FeaturePlan] = {}
        # One call on the real (read-only) tables before the first request: Numba compiles a kernel
        # per array layout and read-only tables are another layout (~1 s on the first request
        # otherwise), and the GPU backends copy the tables to the device here.
        if tables.n_items and tables.item_cat.shape[1]:
            one = np.zeros(1, dtype=np.int64)
            plan = FeaturePlan.of([cat_column(SIDE_ITEM, 0)], [], [2])
            self.inputs(tables, plan, one, [tables.encode_context(None)], one, one)
        log.info("crossing backend: %s", self.crosser.backend)

    @property
    def backend(self) -> str:
        return self.crosser.backend

    def plan(self, tables: DataTables, model: str, version: int, version_dir: Path,
             spec: CrossSpec | None) -> FeaturePlan:
        """The plan of ranker ``model`` ``version`` (resolved once; versions do not change)."""
        key = (model, version)
        if key not in self._plans:
            self._plans[key] = version_plan(tables, version_dir, spec)
        return self._plans[key]

    def inputs(self, tables: DataTables, plan: FeaturePlan, user_rows: np.ndarray,
               contexts: Sequence[EncodedContextLike] | ContextColumns, req_of: np.ndarray,
               item_rows: np.ndarray) -> RankerInputs:
        """Ranker inputs of B rows from ``tables`` (the batch's catalogue): row ``b`` pairs request
        ``req_of[b]`` (user row ``user_rows[q]`` with ``contexts[q]``) with item row ``item_rows[b]``."""
        side = request_side(tables, user_rows, contexts, plan)
        return assemble_features(tables, plan, side, req_of, item_rows, self.crosser)
