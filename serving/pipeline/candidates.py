"""Candidates stage: a request's candidates under its scenario: the sources, their merge, the filters.

Owns: running a batch's recall sources together, one record per request (:class:`_Pending`, its
draws one per source of its scenario): every draw of one kind goes to the source registered for
that kind at once (``serving.pipeline.sources``: one user-tower call and one index search for
every user-to-item draw of the batch, one index search for every item-to-item draw, ...);
filtering each source's list (blocked items, the request's ``exclude``, the seed, a shop or
category restriction) before cutting it at the source's count, and merging the lists
(interleave or concat, an item kept once at its first place, cut at the scenario's
``max_candidates``). Must not touch: ranking, top-k, files, which scenario a request has (the
pipeline resolves it), what a source kind does (its own class).

When the user tower fails, a user-to-item source gives the most popular items instead and the
answer is flagged degraded, as before scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.pipeline.catalogue import Catalogue
from serving.pipeline.recall import Recall
from serving.pipeline.scenario import Scenario
from serving.pipeline.sources import (
    Ask,
    Batch,
    Draw,
    Listed,
    scope_group,
    scope_value,
    source_for,
    source_kinds,
)

__all__ = ["CandidateStage", "Found", "Wanted"]


@dataclass(frozen=True)
class Wanted:
    """One request as this stage sees it: its scenario and what it asks of the sources."""

    scenario: Scenario
    ask: Ask


@dataclass
class Found:
    """One request's candidates. ``fallback``: scores that order them when the ranker fails (the
    source's own scores for one source, the merged place for several; None: the caller's, ordered
    by popularity); ``label``: where they came from (the answer's ``recall``)."""

    ids: np.ndarray
    fallback: np.ndarray | None
    label: str
    degraded: bool = False


@dataclass
class _Pending:
    """One request while its batch's sources run: its draws, one per source of its scenario in the
    scenario's order (none when its own candidates are all it takes)."""

    wanted: Wanted
    found: Found | None = None
    draws: list[Draw[Any]] = field(default_factory=list)


class CandidateStage:
    """Finds the candidates of a batch of requests, each under its own scenario."""

    async def find(self, cat: Catalogue, recall: Recall, wanted: list[Wanted]) -> list[Found]:
        """One :class:`Found` per request, in order."""
        pending = [_Pending(w, _exclusive(cat, w)) for w in wanted]
        for p in pending:
            if p.found is None:
                p.draws = [Draw(src, p.wanted.ask) for src in p.wanted.scenario.spec.sources]
        drawing = [p for p in pending if p.draws]
        # ask each source for more than its count: the filters drop excluded and blocked items, and the seed
        batch = Batch(cat, recall, 1 + max((p.wanted.ask.exclude.size for p in drawing), default=0))
        for kind in source_kinds():
            draws = [d for p in drawing for d in p.draws if d.spec.kind == kind]
            if draws:
                await source_for(kind).draw(batch, draws)
        return [p.found or _merge(cat, p.wanted, p.draws) for p in pending]


def _exclusive(cat: Catalogue, w: Wanted) -> Found | None:
    """The caller's candidates when they are the only ones the scenario takes, filtered."""
    g = w.scenario.spec.given
    if w.ask.given is None or g is None or g.mode != "exclusive":
        return None
    ids = w.ask.given[_Filter(cat, w).mask(w.ask.given)][: w.scenario.max_candidates]
    return Found(ids, None, "given")


class _Filter:
    """What one request may be given: servable, not excluded, not the seed (when asked), within
    the scenario's restriction."""

    def __init__(self, cat: Catalogue, w: Wanted) -> None:
        a = w.ask
        self.cat = cat
        f = w.scenario.spec.filters
        drop = [a.exclude] + ([np.asarray([a.seed], dtype=np.int64)] if f.exclude_seed and a.seed is not None else [])
        self.drop = np.concatenate(drop)
        self.group = scope_group(f.restrict) if f.restrict else None
        self.value = scope_value(cat, a, f.restrict) if f.restrict else 0

    def mask(self, ids: np.ndarray) -> np.ndarray:
        ok = self.cat.servable(ids)
        if self.drop.size:
            ok &= ~np.isin(ids, self.drop)
        if self.group is not None:
            ok[ok] = self.cat.group_of(ids[ok], self.group) == self.value
        return ok


def _merge(cat: Catalogue, w: Wanted, draws: list[Draw[Any]]) -> Found:
    """Filter each source's list and cut it at the source's count, then merge by the scenario's rule."""
    flt = _Filter(cat, w)
    sc = w.scenario
    parts: list[Listed] = []
    for d in draws:
        got = d.listed
        if got is None:
            continue
        keep = flt.mask(got.ids)
        count = d.spec.gives if d.spec.gives is not None else sc.max_candidates
        parts.append(Listed(got.scores[keep][:count].astype(np.float32), got.ids[keep][:count].astype(np.int64),
                            got.label, got.degraded))
    label = next((p.label for p in parts if p.ids.size), parts[0].label if parts else "none")
    degraded = any(p.degraded for p in parts)
    if not parts:
        return Found(np.empty(0, np.int64), np.empty(0, np.float32), label, degraded)
    ids = np.concatenate([p.ids for p in parts])
    scores = np.concatenate([p.scores for p in parts])
    if sc.spec.merge.order == "interleave" and len(parts) > 1:
        place = np.concatenate([np.arange(p.ids.size) for p in parts])
        source = np.concatenate([np.full(p.ids.size, k) for k, p in enumerate(parts)])
        order = np.lexsort((source, place))
        ids, scores = ids[order], scores[order]
    _, first = np.unique(ids, return_index=True)
    keep = np.sort(first)[: sc.max_candidates]
    ids, scores = ids[keep], scores[keep]
    if sum(1 for p in parts if p.ids.size) > 1:  # scores of different sources do not compare: the merged place
        scores = ((ids.size - np.arange(ids.size)) / max(ids.size, 1)).astype(np.float32)
    return Found(ids, scores, label, degraded)
