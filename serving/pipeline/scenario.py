"""Scenarios: one declared candidate pipeline per recommendation surface (home feed, similar items,
a shop's page), served side by side by the same replicas.

Owns: the scenario spec (:class:`ScenarioSpec`, the typed content of a scenario file: its recall
sources, each validated by the spec of the kind it names (``serving.pipeline.sources``, where a
new kind is registered), the merge and dedupe rule, the filters, the ranker, an optional
diversity rule and its limits), its validation on its own (unknown keys, values out of range,
sources or a diversity rule that can never fill ``k``), its resolution against one server
(:meth:`Scenario.resolve`: the global limits in :class:`serving.config.Settings`, the ranking
models of the repository, the catalogue's shops and categories), the context a request must give
(``item_id``, ``shop_id``) and the built-in ``home`` that serves when the repository has none.
Must not touch: files or YAML (``serving.repository.scenarios`` keeps the versioned files), the
request path (``serving.pipeline.candidates`` and ``orchestration`` run a scenario).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, SerializeAsAny, model_validator
from pydantic import ValidationError as PydanticValidationError

from serving.config import Settings
from serving.errors import ScenarioRefusedError
from serving.pipeline.sources import (
    Given,
    Scope,
    SourceSpec,
    Strict,
    UserToItem,
    scope_group,
    scope_needs,
    source_spec,
)
from serving.schemas import first_problem

__all__ = ["DEFAULT_SCENARIO", "NAME_PATTERN", "Diversity", "Filters", "Limits", "Merge", "Scenario", "ScenarioSpec",
           "builtin_home"]

DEFAULT_SCENARIO = "home"
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,47}$"

# One source of the file, validated by the spec of the kind it names (``serving.pipeline.sources``).
Source = Annotated[SerializeAsAny[SourceSpec], PlainValidator(source_spec)]


class Merge(Strict):
    """How the sources' lists become one: ``interleave`` takes the first of each source, then the
    second of each, ...; ``concat`` takes each source's list after the previous one's. An item that
    several sources give is kept once, at its first place (``dedupe: keep_first``, the only rule:
    an answer holds each item once). The merged list is cut at ``limits.max_candidates``."""

    order: Literal["interleave", "concat"] = "interleave"
    dedupe: Literal["keep_first"] = "keep_first"


class Filters(Strict):
    """What candidates may be returned. Always applied besides these: the request's ``exclude``
    and the catalogue's blocked items."""

    exclude_seed: bool = Field(default=False, description="Never return the seed item (item_id) itself.")
    restrict: Scope | None = Field(default=None, description="Only items of one value of an item group: the "
                                   "request's (request:<group>, request_shop) or the seed's (seed:<group>, seed_shop, "
                                   "seed_category).")


class Diversity(Strict):
    """At most ``max_items`` items of one value of an item group (the demo's shop or category) in
    the answer's top k."""

    per: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    max_items: int = Field(ge=1, le=1000)


class Limits(Strict):
    """The scenario's limits; each must lie within the server's global one (absent: the global value)."""

    default_k: int | None = Field(default=None, ge=1)
    max_k: int | None = Field(default=None, ge=1)
    timeout_ms: int | None = Field(default=None, ge=1, description="Deadline when the request gives none.")
    max_timeout_ms: int | None = Field(default=None, ge=1)
    max_candidates: int | None = Field(default=None, ge=1, description="Most candidates ranked per request (the "
                                                                "merged list is cut there), and most given.")


class ScenarioSpec(Strict):
    """The content of one scenario file."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field("", max_length=500)
    sources: list[Source] = Field(min_length=1, max_length=8)
    merge: Merge = Merge()
    filters: Filters = Filters()
    ranker: str = Field("ranker", min_length=1, max_length=128,
                        description="The repository's model that scores the candidates; every data set has `ranker`.")
    diversity: Diversity | None = None
    limits: Limits = Limits()

    @model_validator(mode="after")
    def _check(self) -> ScenarioSpec:
        keys = [s.key for s in self.sources]
        if len(set(keys)) != len(keys):
            raise ValueError("sources: the same source is listed twice")
        lim = self.limits
        if lim.default_k is not None and lim.max_k is not None and lim.default_k > lim.max_k:
            raise ValueError(f"limits: default_k ({lim.default_k}) must be <= max_k ({lim.max_k})")
        if lim.timeout_ms is not None and lim.max_timeout_ms is not None and lim.timeout_ms > lim.max_timeout_ms:
            raise ValueError(f"limits: timeout_ms ({lim.timeout_ms}) must be <= max_timeout_ms ({lim.max_timeout_ms})")
        return self

    @property
    def given(self) -> Given | None:
        """The ``given`` source, if the scenario takes the caller's candidates."""
        return next((s for s in self.sources if isinstance(s, Given)), None)

    @property
    def needs(self) -> frozenset[str]:
        """The request context the sources and the filters need (``item_id``, ``shop_id``)."""
        restrict = self.filters.restrict
        return frozenset().union(*(s.needs for s in self.sources), [scope_needs(restrict)] if restrict else [])

    @property
    def needs_seed(self) -> bool:
        """The request must give ``item_id``."""
        return "item_id" in self.needs

    @property
    def needs_groups(self) -> tuple[str, ...]:
        """The item groups whose value the request must give in its context (``request:<group>``)."""
        return tuple(sorted(n.removeprefix("context.") for n in self.needs if n.startswith("context.")))

    @property
    def groups_used(self) -> frozenset[str]:
        """Every item group the scenario names (scopes and diversity)."""
        scopes = [str(getattr(s, "within", "all")) for s in self.sources] + [self.filters.restrict or "all"]
        used = {scope_group(s) for s in scopes if s != "all"}
        return frozenset(used | ({self.diversity.per} if self.diversity else set()))

    @property
    def needs_shop(self) -> bool:
        """The request must give ``shop_id``."""
        return "shop_id" in self.needs

    @classmethod
    def from_mapping(cls, data: Any) -> ScenarioSpec:
        """Validate a decoded scenario file.

        Raises:
            ScenarioRefusedError: naming the first problem and where it is.
        """
        if not isinstance(data, Mapping):
            raise ScenarioRefusedError(f"a scenario file is a mapping of keys, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except PydanticValidationError as err:
            raise ScenarioRefusedError(first_problem(err, noun="key", root="file").message) from err


@dataclass(frozen=True)
class Scenario:
    """A scenario as one server serves it: the spec at ``version`` (0: built in), with its limits
    resolved against the server's settings."""

    spec: ScenarioSpec
    version: int
    default_k: int
    max_k: int
    timeout_ms: int
    max_timeout_ms: int
    max_candidates: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def source_total(self) -> int:
        """Candidates the sources give at most (the caller's not counted), cut at ``max_candidates``."""
        return min(self.max_candidates, sum(s.gives or 0 for s in self.spec.sources))

    @classmethod
    def resolve(cls, spec: ScenarioSpec, version: int, settings: Settings, rankers: list[str],
                groups: Mapping[str, int]) -> Scenario:
        """``spec`` served by a server with ``settings``, whose ranking models are ``rankers`` and
        whose catalogue has ``groups`` distinct shops and categories (``{"shop": n, "category": m}``).

        Raises:
            ScenarioRefusedError: a limit outside the global one, an unknown ranker, or sources or
                a diversity rule that can never fill ``max_k``.
        """
        lim = spec.limits
        out = cls(spec, version,
                  default_k=_within("default_k", lim.default_k, settings.default_k, settings.max_k),
                  max_k=_within("max_k", lim.max_k, settings.max_k, settings.max_k),
                  timeout_ms=_within("timeout_ms", lim.timeout_ms, settings.default_timeout_ms,
                                     settings.max_timeout_ms),
                  max_timeout_ms=_within("max_timeout_ms", lim.max_timeout_ms, settings.max_timeout_ms,
                                         settings.max_timeout_ms),
                  max_candidates=_within("max_candidates", lim.max_candidates, settings.max_candidates,
                                         settings.max_candidates))
        absent = "absent limits take the server's global values"
        if lim.max_k is None:  # as many as the sources and the diversity rule can fill, within the global max_k
            cap = min(out.max_k, out.max_candidates, out._fillable(groups))
            if 1 <= cap < out.max_k:
                out = replace(out, max_k=cap,
                              default_k=min(out.default_k, cap) if lim.default_k is None else out.default_k)
                absent = f"max_k left out is {cap}, what the sources and the diversity rule can fill"
        if out.default_k > out.max_k or out.timeout_ms > out.max_timeout_ms:
            raise ScenarioRefusedError(f"limits: default_k {out.default_k} / max_k {out.max_k}, timeout_ms "
                                       f"{out.timeout_ms} / max_timeout_ms {out.max_timeout_ms}: a default above "
                                       f"its maximum ({absent})")
        for i, s in enumerate(spec.sources):
            count = s.gives or 0
            if count > settings.max_candidates:
                raise ScenarioRefusedError(f"sources[{i}].count: {count} is above the server's max_candidates "
                                           f"({settings.max_candidates})")
        if spec.ranker not in rankers:
            raise ScenarioRefusedError(f"ranker: unknown model {spec.ranker!r}; the repository's ranking models "
                                       f"are {sorted(rankers)}")
        unknown = sorted(spec.groups_used - set(groups))
        if unknown:
            raise ScenarioRefusedError(f"unknown item group(s) {unknown}: the data set's groups are {sorted(groups)}")
        out._check_fill(groups)
        return out

    def _fillable(self, groups: Mapping[str, int]) -> int:
        """The most items an answer can hold: what the sources give (any number when the caller
        gives candidates) and what the diversity rule lets through."""
        spec, most = self.spec, self.max_k
        if spec.given is None:
            most = min(most, self.source_total)
        div = spec.diversity
        if div is not None:
            most = min(most, div.max_items * self._diversity_values(div, groups))
        return most

    def _diversity_values(self, div: Diversity, groups: Mapping[str, int]) -> int:
        """How many values of the diversity rule's group an answer's items can hold."""
        restrict = self.spec.filters.restrict
        return 1 if restrict is not None and scope_group(restrict) == div.per else int(groups.get(div.per, 0))

    def _check_fill(self, groups: Mapping[str, int]) -> None:
        """Refuse sources, limits or a diversity rule that can never fill ``max_k`` items."""
        spec = self.spec
        if self.max_candidates < self.max_k:
            raise ScenarioRefusedError(f"limits: max_candidates ({self.max_candidates}) below max_k ({self.max_k}) "
                                       "can never fill k")
        if spec.given is None and self.source_total < self.max_k:
            raise ScenarioRefusedError(f"sources give at most {self.source_total} candidates: k up to max_k "
                                       f"({self.max_k}) can never be filled; raise the counts or lower max_k")
        div = spec.diversity
        if div is None:
            return
        restrict = spec.filters.restrict
        n = self._diversity_values(div, groups)
        if div.max_items * n < self.max_k:
            why = (f"every candidate is of one {div.per} (filters.restrict: {restrict})" if n == 1 and restrict
                   else f"the catalogue has {n} {div.per} value(s)")
            raise ScenarioRefusedError(f"diversity: at most {div.max_items} item(s) per {div.per} and {why}: "
                                       f"k up to max_k ({self.max_k}) can never be filled")

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/scenarios`` shows of it."""
        needs = [f for f, on in (("item_id", self.spec.needs_seed), ("shop_id", self.spec.needs_shop)) if on]
        needs += [f"context.{g}" for g in self.spec.needs_groups]
        return {"name": self.name, "version": self.version, "description": self.spec.description,
                "ranker": self.spec.ranker, "needs": needs,
                "sources": [s.model_dump() for s in self.spec.sources], "merge": self.spec.merge.model_dump(),
                "filters": self.spec.filters.model_dump(),
                "diversity": self.spec.diversity.model_dump() if self.spec.diversity else None,
                "limits": {"default_k": self.default_k, "max_k": self.max_k, "timeout_ms": self.timeout_ms,
                           "max_timeout_ms": self.max_timeout_ms, "max_candidates": self.max_candidates}}


def _within(name: str, value: int | None, default: int, cap: int) -> int:
    if value is None:
        return default
    if value > cap:
        raise ScenarioRefusedError(f"limits.{name}: {value} is above the server's global limit ({cap})")
    return value


def builtin_home(settings: Settings) -> Scenario:
    """The ``home`` that serves when the repository has none (version 0): the caller's candidates
    when given, else the user's ``recall_n`` nearest items; the default ranker; the global limits."""
    spec = ScenarioSpec(name=DEFAULT_SCENARIO, description="built in: user-to-item recall, or the caller's "
                        "candidates", sources=[Given(kind="given"), UserToItem(kind="user_to_item",
                                                                              count=settings.recall_n)],
                        ranker=settings.ranker_model)
    return Scenario(spec, 0, settings.default_k, settings.max_k, settings.default_timeout_ms,
                    settings.max_timeout_ms, settings.max_candidates)
