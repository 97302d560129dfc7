"""Recall sources of a scenario, one module per kind, each registered by the kind a scenario file names.

Owns: registering the built-in kinds (``user_to_item``, ``item_to_item``, ``popular``, ``given``,
in that order: the order error messages list them in) and the package's names. Must not touch:
merging, filters, scenarios (``serving.pipeline.candidates``, ``serving.pipeline.scenario``).
"""

from serving.pipeline.sources.base import (
    DEGRADE_ON,
    MAX_COUNT,
    SCOPE_FIELD,
    SCOPE_NEEDS,
    Ask,
    Batch,
    CandidateSource,
    CountedSpec,
    Draw,
    Listed,
    Scope,
    SourceSpec,
    Strict,
    Truth,
    register_source,
    scope_group,
    scope_needs,
    scope_value,
    source_for,
    source_kinds,
    source_spec,
)
from serving.pipeline.sources.given import Given, GivenSource
from serving.pipeline.sources.item_to_item import ItemToItem, ItemToItemSource
from serving.pipeline.sources.popular import Popular, PopularSource
from serving.pipeline.sources.user_to_item import UserToItem, UserToItemSource

__all__ = ["DEGRADE_ON", "MAX_COUNT", "SCOPE_FIELD", "SCOPE_NEEDS", "Ask", "Batch", "CandidateSource", "CountedSpec",
           "Draw", "Given", "ItemToItem", "Listed", "Popular", "Scope", "SourceSpec", "Strict", "Truth", "UserToItem",
           "register_source", "scope_group", "scope_needs", "scope_value", "source_for", "source_kinds", "source_spec"]

for _source in (UserToItemSource(), ItemToItemSource(), PopularSource(), GivenSource()):
    register_source(_source)
