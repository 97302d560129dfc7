"""Candidate sources are classes registered by the kind a scenario file names: a new kind is one
class and its spec, and a scenario file can use it with no other edit (a test-only source here)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytest

from serving.errors import ScenarioRefusedError
from serving.pipeline.sources import Batch, CountedSpec, Draw, Listed, base, register_source, source_kinds
from serving.repository.registry import ModelRegistry
from serving.repository.scenarios import ScenarioStore, parse_scenario, use_live_scenarios
from serving.schemas import RankRequest, RankResponse
from tests.unit.fakes import N_ITEMS, ScoringClient, make_pipeline, make_repo
from tests.unit.test_scenarios import SIMILAR

# the similar items' scenario, its source a kind only this test registers (default_k 8, never the seed)
FRESH = SIMILAR.replace("name: similar", "name: fresh").replace("item_to_item", "newest")


class Newest(CountedSpec):
    """The items added last (the highest ids)."""

    kind: Literal["newest"]


class NewestSource:
    kind: ClassVar[str] = "newest"
    spec: ClassVar[type[Newest]] = Newest

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def draw(self, batch: Batch, draws: list[Draw[Newest]]) -> None:
        self.batches.append(len(draws))
        n = batch.cat.tables.n_items
        for d in draws:
            ids = np.arange(n - 1, -1, -1, dtype=np.int64)[: batch.ask_for(d.spec.count)]
            d.listed = Listed(np.linspace(1, 0, ids.size, dtype=np.float32), ids, "newest")


@pytest.fixture()
def newest(monkeypatch: pytest.MonkeyPatch) -> NewestSource:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # the built-in kinds, and this test's
    source = NewestSource()
    register_source(source)
    return source


def test_the_built_in_kinds_are_registered_in_order() -> None:
    assert source_kinds() == ["user_to_item", "item_to_item", "popular", "given"]
    with pytest.raises(ScenarioRefusedError, match=r"unknown source kind 'newest'; sources are user_to_item, "
                                                   r"item_to_item, popular, given"):
        parse_scenario(FRESH)


def test_a_new_source_registered_by_name_needs_no_other_edit(tmp_path: Path, newest: NewestSource) -> None:
    repo = make_repo(tmp_path)
    p = make_pipeline(repo, ScoringClient())
    spec = parse_scenario(FRESH)
    assert isinstance(spec.sources[0], Newest) and spec.sources[0].model_dump() == {"kind": "newest", "count": 30}
    ScenarioStore(repo).apply(FRESH, p.settings, ModelRegistry(repo), p.catalogue.group_counts())
    assert use_live_scenarios(p, ModelRegistry(repo)) == {}
    assert p.scenarios["fresh"].source_total == 30 and p.scenarios["fresh"].describe()["sources"] == [
        {"kind": "newest", "count": 30}]
    preps = [p.prepare(RankRequest(user_id=u, scenario="fresh", item_id=N_ITEMS - 1)) for u in (1, 2)]
    out, _ = asyncio.run(p.run_batch(preps))
    assert newest.batches == [2]  # one call for every draw of its kind in the batch
    for r in out:
        assert isinstance(r, RankResponse) and r.recall == "newest" and len(r.items) == 8
        ids = {it.item_id for it in r.items}
        assert ids <= set(range(N_ITEMS - 31, N_ITEMS - 1))  # its 30, the seed excluded
    with pytest.raises(ValueError, match="registered already"):
        register_source(NewestSource())
    with pytest.raises(ScenarioRefusedError, match=r"sources\[0\]: unknown source kind 'x'; sources are "
                                                   r"user_to_item, item_to_item, popular, given, newest"):
        parse_scenario(FRESH.replace("newest", "x"))
