"""Feature assembly and crossing kernels: one contract (``kernels.spec``), several backends, one dispatcher."""

from kernels.dispatch import (
    BACKENDS,
    Crosser,
    KernelBackendError,
    available_backends,
    get_crosser,
    gpu_unavailable_reason,
    set_cpu_threads,
)
from kernels.spec import (
    CrossInputs,
    CrossOutput,
    CrossSpec,
    FeatureInputs,
    FeatureOutput,
    FeaturePlan,
    cross_hash_scalar,
)

__all__ = [
    "BACKENDS",
    "CrossInputs",
    "CrossOutput",
    "CrossSpec",
    "Crosser",
    "FeatureInputs",
    "FeatureOutput",
    "FeaturePlan",
    "KernelBackendError",
    "available_backends",
    "cross_hash_scalar",
    "get_crosser",
    "gpu_unavailable_reason",
    "set_cpu_threads",
]
