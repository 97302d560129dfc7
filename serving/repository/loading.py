"""Which versions of a model Triton holds, and loading exactly those after checking them.

Owns: the retention rule (the versions the traffic split names, those being prepared for it, and
at most ``keep_others`` more, newest first: the rest stay on disk, unloaded, for a rollback to
load again), the check of what Triton is about to run (each version's files against its recorded
digests, ``serving.triton.digests``; the model's config uses rankserve's backend and parameters
only), and the load request itself: the model's ``config.pbtxt`` with an explicit version list,
so that Triton never loads a version that was not checked. Must not touch: traffic (push and
rollback move it), the serving pipeline.

A version that fails its check is refused, with the reasons. When a version the traffic split
needs fails, :func:`load_checked` raises :class:`serving.errors.IntegrityError` (the start-up
stops, naming the file; a follower keeps what Triton holds and says why).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf import json_format

from serving.errors import IntegrityError, RankserveError
from serving.repository.registry import ModelRegistry
from serving.triton.config import TORCH_THREADS_PARAMETER, read_config
from serving.triton.digests import Finding, clear_bytecode, verify_version

__all__ = ["Loader", "LoadPlan", "config_findings", "load_all", "load_checked", "plan_versions", "startup_loader",
           "wanted_versions"]

log = logging.getLogger("rankserve")

_BACKENDS = frozenset({"python"})
_PARAMETERS = frozenset({TORCH_THREADS_PARAMETER})


class Loader(Protocol):
    """What loading needs of Triton (``serving.triton.client.TritonClient``)."""

    def load_model(self, name: str, config: str | None = None) -> None: ...


@dataclass(frozen=True)
class LoadPlan:
    """The versions of ``model`` to hold in Triton, those refused by the check, and the model's
    config problems (which refuse every version)."""

    model: str
    load: tuple[int, ...]
    needed: tuple[int, ...]  # of ``load`` and the refused, those the traffic split needs
    refused: dict[int, list[Finding]] = field(default_factory=dict)
    config_problems: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"{self.model}: load {list(self.load)}"]
        for v, findings in sorted(self.refused.items()):
            parts.append(f"v{v} refused ({'; '.join(map(str, findings))})")
        parts.extend(self.config_problems)
        return ", ".join(parts)


def config_findings(registry: ModelRegistry, model: str) -> tuple[str, ...]:
    """What in ``model``'s ``config.pbtxt`` rankserve would not run: another backend, parameters it
    does not set (a python backend parameter such as ``EXECUTION_ENV_PATH`` runs other code), or
    repository agents."""
    cfg = read_config(registry.repo, model)
    out = []
    if cfg.backend not in _BACKENDS or cfg.platform:
        out.append(f"config.pbtxt: backend {cfg.backend or cfg.platform!r} is not one rankserve runs")
    unknown = sorted(set(cfg.parameters) - _PARAMETERS)
    if unknown:
        out.append(f"config.pbtxt: parameters {unknown} are not rankserve's")
    if cfg.model_repository_agents.agents:
        out.append("config.pbtxt: repository agents are not allowed")
    return tuple(out)


def wanted_versions(registry: ModelRegistry, model: str, keep_others: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(wanted, needed): the versions of ``model`` Triton should hold, unchecked (cheap: a follower
    asks every second), and of them those the traffic split needs."""
    on_disk = registry.versions(model)
    traffic = registry.traffic(model) if on_disk else None
    needed = tuple(sorted(set(traffic.loaded_versions()) & set(on_disk))) if traffic is not None else ()
    others = [v for v in reversed(on_disk) if v not in needed][:keep_others]
    return tuple(sorted({*needed, *others})), needed


def plan_versions(registry: ModelRegistry, model: str, keep_others: int) -> LoadPlan:
    """The versions of ``model`` to load: the traffic split's (live, canary, shadow, preparing) and
    the ``keep_others`` newest others, each checked against its digests."""
    on_disk = registry.versions(model)
    wanted, needed = wanted_versions(registry, model, keep_others)
    problems = config_findings(registry, model) if on_disk else ()
    refused: dict[int, list[Finding]] = {}
    for v in wanted:
        found = verify_version(registry.repo / model / str(v))
        if found:
            refused[v] = found
    load = tuple(v for v in wanted if v not in refused) if not problems else ()
    return LoadPlan(model, load, needed, refused, problems)


def _config_json(registry: ModelRegistry, model: str, versions: tuple[int, ...]) -> str:
    cfg = read_config(registry.repo, model)
    cfg.version_policy.Clear()
    cfg.version_policy.specific.versions.extend(versions)
    return json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True))


def load_checked(client: Loader, registry: ModelRegistry, model: str, keep_others: int,
                 holding: tuple[int, ...] | None = None) -> LoadPlan:
    """Load ``model`` into Triton with exactly the versions of :func:`plan_versions` that passed.
    ``holding``: what Triton holds already (as far as the caller knows); when the plan is the same,
    Triton is not asked again (a load of a loaded model restarts its instances: seconds without it).

    Raises:
        IntegrityError: a version the traffic split needs failed its check, or the config did;
            nothing was asked of Triton (it keeps what it holds).
        RankserveError: Triton refused the load (``TritonError``, ``BackendUnavailableError``).
    """
    plan = plan_versions(registry, model, keep_others)
    bad_needed = {v: f for v, f in plan.refused.items() if v in plan.needed}
    if plan.config_problems or bad_needed:
        first = (plan.config_problems[0] if plan.config_problems else
                 f"{model}/{min(bad_needed)}/{bad_needed[min(bad_needed)][0]}")
        raise IntegrityError(f"{model} is not loaded: {first}",
                             hint=f"rankserve verify lists every finding; {plan.describe()}")
    for v, findings in plan.refused.items():
        log.warning(json.dumps({"event": "version_refused", "model": model, "version": v,
                                "findings": [str(f) for f in findings]}))
    if not plan.load:
        raise RankserveError(f"{model} has no version that passes its check")
    if plan.load == holding:
        return plan
    for v in plan.load:
        clear_bytecode(registry.repo / model / str(v))
    client.load_model(model, _config_json(registry, model, plan.load))
    return plan


def load_all(client: Loader, registry: ModelRegistry, keep_others: int,
             models: list[str] | None = None) -> list[LoadPlan]:
    """:func:`load_checked` for every model of the repository (or ``models``), at Triton's start.

    Raises:
        IntegrityError: the first model whose needed versions fail their check (nothing of it loaded).
    """
    return [load_checked(client, registry, m, keep_others) for m in (models or registry.models())]


def startup_loader(registry: ModelRegistry, keep_others: int) -> Callable[[Loader], list[LoadPlan]]:
    """What a Triton that rankserve starts loads after each start (``TritonProcess(load=...)``):
    every model, checked, as :func:`load_all`."""
    return lambda client: load_all(client, registry, keep_others)
