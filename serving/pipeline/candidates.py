"""Candidates stage: a request's candidates under its scenario: the sources, their merge, the filters.

Owns: running a batch's recall sources together (one user-tower call and one index search for
every user-to-item source in the batch, one index search for every item-to-item source, popular
items from the catalogue, the caller's candidates), filtering each source's list (blocked items,
the request's ``exclude``, the seed, a shop or category restriction) before cutting it at the
source's count, and merging the lists (interleave or concat, an item kept once at its first
place, cut at the scenario's ``max_candidates``). Must not touch: ranking, top-k, files, which
scenario a request has (the pipeline resolves it).

When the user tower fails, a user-to-item source gives the most popular items instead and the
answer is flagged degraded, as before scenarios.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serving.errors import BackendUnavailableError, DeadlineExceededError, TritonError
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.features import FeatureTables
from serving.pipeline.recall import VectorIndex
from serving.pipeline.scenario import SCOPE_FIELD, Given, ItemToItem, Popular, Scenario, Source, UserToItem

__all__ = ["Ask", "CandidateStage", "Found", "Recall"]

log = logging.getLogger(__name__)

# Failures of a model call after which a source falls back rather than failing the request.
DEGRADE_ON = (TritonError, BackendUnavailableError, DeadlineExceededError)


class Recall(Protocol):
    """The recall stage (``serving.pipeline.recall.RecallStage``)."""

    model: str
    version: int
    index: VectorIndex
    label: str

    async def embed(self, user_rows: np.ndarray, *, deadline: float) -> np.ndarray: ...
    def search(self, embeddings: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]: ...
    def vectors(self, ids: np.ndarray) -> np.ndarray: ...
    def popular(self, n: int) -> tuple[np.ndarray, np.ndarray]: ...
    def apply(self, tables: FeatureTables, rows: np.ndarray, catalogue_version: int) -> None: ...
    def warm(self) -> None: ...


@dataclass(frozen=True)
class Ask:
    """What one request asks of this stage."""

    scenario: Scenario
    user_row: int
    seed: int | None  # item_id: the seed of item-to-item, and of seed_* scopes
    shop: int | None  # shop_id
    given: np.ndarray | None  # the caller's candidates (checked, unique, in request order)
    exclude: np.ndarray
    deadline: float


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
class _Listed:
    """One source's list for one request, before its filter and count."""

    scores: np.ndarray
    ids: np.ndarray
    label: str
    degraded: bool = False


class CandidateStage:
    """Finds the candidates of a batch of requests, each under its own scenario."""

    async def find(self, cat: Catalogue, recall: Recall, asks: list[Ask]) -> list[Found]:
        """One :class:`Found` per ask, in order."""
        out: list[Found | None] = [None] * len(asks)
        for i, a in enumerate(asks):
            g = a.scenario.spec.given
            if a.given is not None and g is not None and g.mode == "exclusive":
                ids = a.given[_Filter(cat, a).mask(a.given)][: a.scenario.max_candidates]
                out[i] = Found(ids, None, "given")
        todo = [i for i, f in enumerate(out) if f is None]
        listed: dict[tuple[int, int], _Listed] = {}
        # ask each source for more than its count: the filters drop excluded and blocked items, and the seed
        extra = 1 + max((asks[i].exclude.size for i in todo), default=0)
        await self._user_to_item(cat, recall, asks, todo, listed, extra)
        self._item_to_item(cat, recall, asks, todo, listed, extra)
        for i in todo:
            a = asks[i]
            for j, src in enumerate(a.scenario.spec.sources):
                if isinstance(src, Popular):
                    listed[i, j] = _popular(cat, a, src.within, _ask_for(cat, src.count, extra))
                elif isinstance(src, Given) and a.given is not None:
                    listed[i, j] = _Listed(cat.tables.popularity[a.given].astype(np.float32), a.given, "given")
            out[i] = _merge(cat, a, [(src, listed.get((i, j))) for j, src in enumerate(a.scenario.spec.sources)])
        return [f for f in out if f is not None]

    @staticmethod
    async def _user_to_item(cat: Catalogue, recall: Recall, asks: list[Ask], todo: list[int],
                            listed: dict[tuple[int, int], _Listed], extra: int) -> None:
        """Every user-to-item source of the batch: one user-tower call and one index search."""
        want = [(i, j, s.count) for i in todo for j, s in enumerate(asks[i].scenario.spec.sources)
                if isinstance(s, UserToItem)]
        if not want:
            return
        n = _ask_for(cat, max(c for _, _, c in want), extra)
        rows = np.asarray([asks[i].user_row for i, _, _ in want], dtype=np.int64)
        try:
            # one call serves them all: it may take until the latest deadline; each request's own
            # deadline is enforced where it waits (serving.service), not by the batch
            emb = await recall.embed(rows, deadline=max(asks[i].deadline for i, _, _ in want))
            sc, ids = recall.search(emb, n)
            for r, (i, j, _) in enumerate(want):
                listed[i, j] = _Listed(sc[r], ids[r], recall.label)
        except DEGRADE_ON as err:
            log.warning("user tower failed, recalling popular items for %d requests: %s", len(want), err)
            s1, i1 = cat.popular(n)
            for i, j, _ in want:
                listed[i, j] = _Listed(s1, i1, "popular", degraded=True)

    @staticmethod
    def _item_to_item(cat: Catalogue, recall: Recall, asks: list[Ask], todo: list[int],
                      listed: dict[tuple[int, int], _Listed], extra: int) -> None:
        """Every item-to-item source of the batch: one index search with the seeds' own embeddings
        (``space: embedding``), one exact search of the content vectors (``space: content``)."""
        wanted = [(i, j, s.count, s.space) for i in todo for j, s in enumerate(asks[i].scenario.spec.sources)
                  if isinstance(s, ItemToItem) and asks[i].seed is not None]
        content = [(i, j, c) for i, j, c, space in wanted if space == "content"]
        if content:
            sc, ids = cat.content_nearest(np.asarray([asks[i].seed for i, _, _ in content], dtype=np.int64),
                                          _ask_for(cat, max(c for _, _, c in content), extra))
            for r, (i, j, _) in enumerate(content):
                listed[i, j] = _Listed(sc[r], ids[r], "content")
        want = [(i, j, c) for i, j, c, space in wanted if space == "embedding"]
        if not want:
            return
        seeds = np.asarray([asks[i].seed for i, _, _ in want], dtype=np.int64)
        n = _ask_for(cat, max(c for _, _, c in want), extra)
        try:
            sc, ids = recall.search(recall.vectors(seeds), n)
        except DEGRADE_ON as err:
            log.warning("item-to-item unavailable, recalling the seeds' categories' popular items: %s", err)
            for i, j, _ in want:
                p = _popular(cat, asks[i], "seed_category", n)
                listed[i, j] = _Listed(p.scores, p.ids, "popular", degraded=True)
            return
        for r, (i, j, _) in enumerate(want):
            listed[i, j] = _Listed(sc[r], ids[r], recall.label)


def _ask_for(cat: Catalogue, count: int, extra: int) -> int:
    """How many items to ask a source for so that ``count`` are left after the filters, as far as
    excluded and blocked items go (a restriction to a shop or category may leave fewer)."""
    return count + extra + min(cat.n_blocked, count)


def _scope_value(cat: Catalogue, a: Ask, scope: str) -> int:
    """The shop or category id a scope names for this request (the pipeline checked the context)."""
    if scope == "request_shop":
        return int(a.shop if a.shop is not None else -1)
    return int(cat.group_of(np.asarray([a.seed]), SCOPE_FIELD[scope])[0])


def _popular(cat: Catalogue, a: Ask, within: str, n: int) -> _Listed:
    if within == "all":
        sc, ids = cat.popular(n)
    else:
        sc, ids = cat.popular(n, SCOPE_FIELD[within], _scope_value(cat, a, within))
    return _Listed(sc, ids, "popular")


class _Filter:
    """What one request may be given: servable, not excluded, not the seed (when asked), within
    the scenario's restriction."""

    def __init__(self, cat: Catalogue, a: Ask) -> None:
        self.cat = cat
        f = a.scenario.spec.filters
        drop = [a.exclude] + ([np.asarray([a.seed], dtype=np.int64)] if f.exclude_seed and a.seed is not None else [])
        self.drop = np.concatenate(drop)
        self.group = SCOPE_FIELD[f.restrict] if f.restrict else None
        self.value = _scope_value(cat, a, f.restrict) if f.restrict else 0

    def mask(self, ids: np.ndarray) -> np.ndarray:
        ok = self.cat.servable(ids)
        if self.drop.size:
            ok &= ~np.isin(ids, self.drop)
        if self.group is not None:
            ok[ok] = self.cat.group_of(ids[ok], self.group) == self.value
        return ok


def _merge(cat: Catalogue, a: Ask, lists: list[tuple[Source, _Listed | None]]) -> Found:
    """Filter each source's list and cut it at the source's count, then merge by the scenario's rule."""
    flt = _Filter(cat, a)
    parts: list[_Listed] = []
    for src, got in lists:
        if got is None:
            continue
        keep = flt.mask(got.ids)
        count = getattr(src, "count", a.scenario.max_candidates)
        parts.append(_Listed(got.scores[keep][:count].astype(np.float32), got.ids[keep][:count].astype(np.int64),
                             got.label, got.degraded))
    label = next((p.label for p in parts if p.ids.size), parts[0].label if parts else "none")
    degraded = any(p.degraded for p in parts)
    if not parts:
        return Found(np.empty(0, np.int64), np.empty(0, np.float32), label, degraded)
    ids = np.concatenate([p.ids for p in parts])
    scores = np.concatenate([p.scores for p in parts])
    if a.scenario.spec.merge.order == "interleave" and len(parts) > 1:
        place = np.concatenate([np.arange(p.ids.size) for p in parts])
        source = np.concatenate([np.full(p.ids.size, k) for k, p in enumerate(parts)])
        order = np.lexsort((source, place))
        ids, scores = ids[order], scores[order]
    _, first = np.unique(ids, return_index=True)
    keep = np.sort(first)[: a.scenario.max_candidates]
    ids, scores = ids[keep], scores[keep]
    if sum(1 for p in parts if p.ids.size) > 1:  # scores of different sources do not compare: the merged place
        scores = ((ids.size - np.arange(ids.size)) / max(ids.size, 1)).astype(np.float32)
    return Found(ids, scores, label, degraded)
