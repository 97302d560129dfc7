"""Candidate sources: the Protocol every kind of recall source implements, the base of their
specs, the registry by kind, and the records a source works on.

Owns: :class:`CandidateSource` (one class per kind, registered by the ``kind`` a scenario file
names, with its spec beside it), :class:`SourceSpec` (what a scenario file says of one source: the
candidates it gives, the request context it needs, its key in a scenario, the items it admits in
truth for an oracle), the registry (:func:`register_source`, :func:`source_for`,
:func:`source_spec`), the per-request records (:class:`Ask`, :class:`Draw`, :class:`Listed`) and
the scopes a source or a filter may restrict to. A new source kind is one class and its spec,
registered here: nothing else is edited. Must not touch: merging, filtering or scenarios
(``serving.pipeline.candidates`` and ``serving.pipeline.scenario``), files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, Literal, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from serving.data.assembly import EncodedContextLike
from serving.errors import BackendUnavailableError, DeadlineExceededError, TritonError
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.recall import Recall

__all__ = ["DEGRADE_ON", "MAX_COUNT", "SCOPE_FIELD", "SCOPE_NEEDS", "Ask", "Batch", "CandidateSource", "CountedSpec", "Draw", "Listed", "Scope",
           "ScopedSpec", "SourceSpec", "Strict", "Truth", "register_source", "scope_value", "source_for", "source_kinds",
           "scope_group", "scope_needs", "source_spec"]

MAX_COUNT = 10_000  # most candidates one source may give (the index's own search limit clamps further)

# Failures of a model call after which a source falls back rather than failing the request.
DEGRADE_ON = (TritonError, BackendUnavailableError, DeadlineExceededError)

# Where a ``popular`` source looks, and what ``filters.restrict`` keeps: the items of one value of
# an item group (``schema.items.groups``), the value the request gives in its context
# (``request:<group>``, from ``context.<group>``) or the seed item's (``seed:<group>``, the seed is
# ``item_id``). The demo's spellings stay: the request's shop (``request_shop``, from ``shop_id``),
# the seed's shop or category (``seed_shop``, ``seed_category``).
Scope = Annotated[str, Field(pattern=r"^(request_shop|seed_shop|seed_category|(request|seed):[A-Za-z_][A-Za-z0-9_]{0,63})$")]
SCOPE_FIELD: dict[str, str] = {"request_shop": "shop", "seed_shop": "shop", "seed_category": "category"}
SCOPE_NEEDS: dict[str, str] = {"request_shop": "shop_id", "seed_shop": "item_id", "seed_category": "item_id"}


def scope_group(scope: str) -> str:
    """The item group a scope names (``seed:store`` -> ``store``; ``seed_shop`` -> ``shop``)."""
    return SCOPE_FIELD.get(scope) or scope.partition(":")[2]


def scope_needs(scope: str) -> str:
    """What the request must give for a scope: ``item_id``, ``shop_id`` or ``context.<group>``."""
    if scope in SCOPE_NEEDS:
        return SCOPE_NEEDS[scope]
    side, _, group = scope.partition(":")
    return "item_id" if side == "seed" else f"context.{group}"


class Strict(BaseModel):
    """A part of a scenario file: unknown keys refused, no coercion, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Truth(Protocol):
    """The items a candidate rule admits in truth for one request, as an oracle knows them
    (``training.scenario_quality``): each a mask over every item."""

    def everything(self) -> np.ndarray: ...
    def nothing(self) -> np.ndarray: ...
    def within(self, scope: str) -> np.ndarray: ...
    def nearest_seed(self, count: int) -> np.ndarray: ...


class SourceSpec(Strict):
    """What a scenario file says of one source; each kind's spec names its ``kind`` as a literal."""

    kind: str

    @property
    def key(self) -> tuple[str, ...]:
        """What makes two sources of one scenario the same source (listed twice: refused)."""
        return (self.kind,)

    @property
    def gives(self) -> int | None:
        """Candidates this source gives at most, after filters (None: as many as it has)."""
        return None

    @property
    def needs(self) -> frozenset[str]:
        """The request context this source needs (``item_id``, ``shop_id``)."""
        return frozenset()

    def admits(self, truth: Truth) -> np.ndarray:
        """The items this source's rule admits in truth (default: any item)."""
        return truth.everything()


class CountedSpec(SourceSpec):
    """A source that gives ``count`` candidates."""

    count: int = Field(ge=1, le=MAX_COUNT, description="Candidates this source gives (after filters).")

    @property
    def gives(self) -> int:
        return self.count


class ScopedSpec(CountedSpec):
    """A counted source that may look within one value of an item group (a scope) rather than over
    the whole catalogue (``all``)."""

    within: Literal["all"] | Scope = Field(default="all", description="Where the source looks: the whole "
                                           "catalogue, or the items of one value of an item group.")

    @property
    def key(self) -> tuple[str, ...]:
        return (self.kind, self.within)

    @property
    def needs(self) -> frozenset[str]:
        own = frozenset() if self.within == "all" else frozenset({scope_needs(self.within)})
        return super().needs | own

    def admits(self, truth: Truth) -> np.ndarray:
        """Any item the source's rule admits, within its scope."""
        everywhere = self.admits_everywhere(truth)
        return everywhere if self.within == "all" else everywhere & truth.within(self.within)

    def admits_everywhere(self, truth: Truth) -> np.ndarray:
        """The items the source's rule admits over the whole catalogue (default: any item)."""
        return truth.everything()


S = TypeVar("S", bound=SourceSpec)


@dataclass(frozen=True)
class Ask:
    """What one request asks of its sources."""

    user_row: int
    seed: int | None  # item_id: the seed of item-to-item, and of seed_* scopes
    shop: int | None  # shop_id
    given: np.ndarray | None  # the caller's candidates (checked, unique, in request order)
    exclude: np.ndarray
    deadline: float
    context: EncodedContextLike | None = None  # the request's context (None: none given)
    groups: Mapping[str, int] = field(default_factory=dict)  # the item groups' codes the context gives


@dataclass
class Listed:
    """One source's list for one request, before its filter and count."""

    scores: np.ndarray
    ids: np.ndarray
    label: str
    degraded: bool = False


@dataclass
class Draw(Generic[S]):
    """One source of one request's scenario: its spec, the request's ask, and the list the source
    found for it (None: nothing, e.g. no candidates given)."""

    spec: S
    ask: Ask
    listed: Listed | None = None


@dataclass(frozen=True)
class Batch:
    """What every source of one batch works with: the catalogue and the recall stage of the
    batch's snapshot, and how many more items to ask for than a source gives (the filters drop
    excluded and blocked items, and the seed)."""

    cat: Catalogue
    recall: Recall
    extra: int = 1

    def ask_for(self, count: int) -> int:
        """How many items to ask a source for so that ``count`` are left after the filters, as far
        as excluded and blocked items go (a restriction to a shop or category may leave fewer)."""
        return count + self.extra + min(self.cat.n_blocked, count)

    def popular(self, ask: Ask, within: str, n: int) -> Listed:
        """The ``n`` most popular items, overall (``all``) or within a scope of this request."""
        if within == "all":
            sc, ids = self.cat.popular(n)
        else:
            sc, ids = self.cat.popular(n, scope_group(within), scope_value(self.cat, ask, within))
        return Listed(sc, ids, "popular")

    def members(self, ask: Ask, within: str) -> np.ndarray:
        """The item ids of a scope of this request (blocked items included: filters drop them)."""
        return self.cat.members(scope_group(within), scope_value(self.cat, ask, within))

    def nearest_within(self, ask: Ask, within: str, query: np.ndarray, n: int) -> Listed:
        """The ``n`` items of a scope of this request whose two-tower embeddings have the largest
        inner product with ``query``: exact over the scope's items as the catalogue holds them now.

        Raises:
            BackendUnavailableError: the recall version carries no item embeddings.
        """
        from serving.index.faiss_index import exact_nearest  # FAISS only where a search runs

        ids = self.members(ask, within)
        if ids.size == 0:
            return Listed(np.empty(0, np.float32), ids, "exact")
        scores, pos = exact_nearest(query.reshape(1, -1), self.recall.vectors(ids), n)
        return Listed(scores[0], ids[pos[0]], "exact")


def scope_value(cat: Catalogue, ask: Ask, scope: str) -> int:
    """The group value (its code) a scope names for this request (the pipeline checked the context)."""
    if scope == "request_shop":
        return int(ask.shop if ask.shop is not None else -1)
    if scope.startswith("request:"):
        return int(ask.groups.get(scope_group(scope), -1))
    return int(cat.group_of(np.asarray([ask.seed]), scope_group(scope))[0])


class CandidateSource(Protocol[S]):
    """One kind of recall source: fills the list of every draw of its kind in a batch at once
    (one model call or one search for all of them, where it makes any)."""

    kind: ClassVar[str]
    spec: ClassVar[type[Any]]

    async def draw(self, batch: Batch, draws: list[Draw[S]]) -> None: ...


_REGISTRY: dict[str, CandidateSource[Any]] = {}


def register_source(source: CandidateSource[Any]) -> CandidateSource[Any]:
    """Serve scenario sources of ``source.kind`` with ``source`` (its spec: ``source.spec``).

    Raises:
        ValueError: the kind is registered already.
    """
    if source.kind in _REGISTRY:
        raise ValueError(f"a source of kind {source.kind!r} is registered already")
    _REGISTRY[source.kind] = source
    return source


def source_kinds() -> list[str]:
    """Every registered kind, in the order of registration."""
    return list(_REGISTRY)


def source_for(kind: str) -> CandidateSource[Any]:
    """The source registered for ``kind``."""
    return _REGISTRY[kind]


def source_spec(value: Any) -> SourceSpec:
    """One source of a scenario file as the spec of its kind (a pydantic validator).

    Raises:
        pydantic_core.PydanticCustomError: not a mapping, no kind, or an unknown kind.
        pydantic.ValidationError: the spec of its kind refused it (with the place in it).
    """
    kinds = ", ".join(_REGISTRY)
    if isinstance(value, SourceSpec) and value.kind in _REGISTRY and type(value) is _REGISTRY[value.kind].spec:
        return value
    if not isinstance(value, Mapping):
        raise PydanticCustomError("source_type", "a source is a mapping of keys ({kinds})", {"kinds": kinds})
    if "kind" not in value:
        raise PydanticCustomError("source_kind_missing", "a source names its kind ({kinds})", {"kinds": kinds})
    source = _REGISTRY.get(value["kind"]) if isinstance(value["kind"], str) else None
    if source is None:
        raise PydanticCustomError("source_kind_unknown", "unknown source kind {kind}; sources are {kinds}",
                                  {"kind": repr(value["kind"]), "kinds": kinds})
    spec: SourceSpec = source.spec.model_validate(dict(value))
    return spec
