"""The ranking pipeline over a batch of requests: recall -> features -> crossing -> ranking -> top-k.

Owns: resolving a validated request (:meth:`RankPipeline.prepare`) and running a batch of them
(:meth:`RankPipeline.run_batch`), one record per request. Each request fails alone: its error
takes its place in the output list. Must not touch: HTTP, gRPC, Ray, admission or files; the
model repository is seen through :class:`ModelCatalog`.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from kernels import CrossSpec
from serving.config import Settings
from serving.errors import (
    BackendUnavailableError,
    DeadlineExceededError,
    ModelNotFoundError,
    RankserveError,
    TritonError,
    ValidationError,
)
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.features import FeatureTables, RankerInputs
from serving.pipeline.recall import VectorIndex
from serving.pipeline.routing import Traffic, route, user_bucket
from serving.pipeline.shadow import ShadowScorer
from serving.pipeline.topk import top_k
from serving.schemas import RankRequest, RankResponse, ScoredItem

__all__ = ["BatchStats", "Crossing", "ModelCatalog", "Prepared", "RankPipeline", "Ranking", "Recall"]

log = logging.getLogger(__name__)

# Failures of a model call after which a request is answered degraded rather than with an error.
_DEGRADE_ON = (TritonError, BackendUnavailableError, DeadlineExceededError)


class ModelCatalog(Protocol):
    """What the pipeline reads of the model repository (``serving.repository.registry.ModelRegistry``)."""

    def models(self) -> list[str]: ...
    def traffic(self, model: str) -> Traffic: ...
    def cross_spec(self, model: str, version: int) -> CrossSpec: ...
    def version_dir(self, model: str, version: int) -> Path: ...


class Recall(Protocol):
    """The recall stage (``serving.pipeline.recall.RecallStage``)."""

    model: str
    version: int
    index: VectorIndex
    label: str

    async def embed(self, user_rows: np.ndarray, *, deadline: float) -> np.ndarray: ...
    def search(self, embeddings: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]: ...
    def popular(self, n: int) -> tuple[np.ndarray, np.ndarray]: ...
    def apply(self, tables: FeatureTables, rows: np.ndarray, catalogue_version: int) -> None: ...
    def warm(self) -> None: ...


class Crossing(Protocol):
    """The crossing stage (``serving.pipeline.crossing.CrossingStage``)."""

    @property
    def backend(self) -> str: ...
    def inputs(self, tables: FeatureTables, user_rows: np.ndarray, item_rows: np.ndarray,
               spec: CrossSpec) -> RankerInputs: ...


class Ranking(Protocol):
    """The ranking stage (``serving.pipeline.ranking.RankingStage``)."""

    async def score(self, model: str, version: int, inputs: RankerInputs, *, deadline: float) -> np.ndarray: ...


@dataclass
class Prepared:
    """A validated request, resolved against the tables and the traffic split."""

    request_id: str
    user_id: int
    user_row: int
    cold_start: bool
    k: int
    model: str
    version: int
    candidates: np.ndarray | None  # int64, unique, in request order; None: recall
    exclude: np.ndarray  # int64
    arrival: float  # time.monotonic()
    deadline: float
    cost: int  # rows this request adds to a batch (batches are bounded by total candidates)


@dataclass
class _Slot:
    """One request's state while its batch runs."""

    req: Prepared
    candidates: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    recall_scores: np.ndarray | None = None  # None: the caller gave the candidates
    recall: str = "given"
    scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    degraded: bool = False
    error: RankserveError | None = None


@dataclass
class BatchStats:
    """What one batch did (for metrics and the benchmark)."""

    requests: int = 0
    rows: int = 0
    degraded: int = 0
    stage_ms: dict[str, float] = field(default_factory=dict)


class RankPipeline:
    """Ranks batches of prepared requests.

    Args:
        settings: limits and defaults.
        tables: user/item features (the catalogue before any change).
        catalog: model versions, crossing specs and traffic.
        recall: the recall stage (user tower + index of one version).
        crossing: the crossing stage.
        ranking: the ranking stage.
    """

    def __init__(self, settings: Settings, tables: FeatureTables, catalog: ModelCatalog, recall: Recall,
                 crossing: Crossing, ranking: Ranking) -> None:
        self.settings = settings
        self.catalogue = Catalogue.initial(tables)  # swapped whole when a catalogue change arrives
        self.catalog = catalog
        self.recall = recall
        self.crossing = crossing
        self.ranking = ranking
        self._traffic: dict[str, Traffic] = {}
        self.shadow = ShadowScorer(lambda m, v, x, d: ranking.score(m, v, x, deadline=d))
        self.refresh_traffic()

    # -- per request, before batching ---------------------------------------------------
    def refresh_traffic(self) -> None:
        """Re-read the traffic split of every ranking model (after a push or rollback)."""
        tower = self.settings.user_tower_model
        self._traffic = {m: self.catalog.traffic(m) for m in self.catalog.models() if m != tower}

    @property
    def traffic_split(self) -> dict[str, Traffic]:
        """Current traffic split of every ranking model."""
        return dict(self._traffic)

    def traffic(self, model: str) -> Traffic:
        try:
            return self._traffic[model]
        except KeyError:
            raise ModelNotFoundError(
                f"unknown model {model!r}; served: {sorted(self._traffic)}", field="model"
            ) from None

    def prepare(self, req: RankRequest, *, arrival: float | None = None) -> Prepared:
        """Resolve a validated request; checks that need the tables (unknown items, model).

        Raises:
            ValidationError: unknown candidate ids (422).
            ModelNotFoundError: unknown model (404).
        """
        now = time.monotonic() if arrival is None else arrival
        model = req.model or self.settings.ranker_model
        version = route(self.traffic(model), req.user_id)
        row, cold = self.catalogue.tables.user_row(req.user_id)
        candidates = None if req.candidates is None else self._given(req.candidates)
        timeout_ms = req.timeout_ms or self.settings.default_timeout_ms
        return Prepared(
            request_id=req.request_id or uuid.uuid4().hex,
            user_id=req.user_id,
            user_row=row,
            cold_start=cold,
            k=req.k or self.settings.default_k,
            model=model,
            version=version,
            candidates=candidates,
            exclude=np.asarray(req.exclude, dtype=np.int64),
            arrival=now,
            deadline=now + timeout_ms / 1000.0,
            cost=int(candidates.shape[0]) if candidates is not None else self.settings.recall_n,
        )

    def _given(self, ids: list[int]) -> np.ndarray:
        """Given candidates, checked against the catalogue, duplicates dropped, request order kept."""
        cand = np.asarray(ids, dtype=np.int64)
        tables = self.catalogue.tables
        unknown = tables.unknown_items(cand)
        if unknown.size:
            shown = ", ".join(map(str, unknown[:5].tolist()))
            raise ValidationError(
                f"{unknown.size} unknown item id(s) in candidates: {shown} (valid ids are 0..{tables.n_items - 1})",
                field="candidates",
            )
        _, first = np.unique(cand, return_index=True)
        return cand[np.sort(first)]

    # -- per batch ----------------------------------------------------------------------
    async def run_batch(self, batch: list[Prepared]) -> tuple[list[RankResponse | RankserveError], BatchStats]:
        """Rank a batch: one user-tower call, one index search, one crossing launch and chunked
        ranker calls per (model, version), then top-k. Returns one answer or error per request."""
        started = time.monotonic()
        cat = self.catalogue  # one catalogue for the whole batch
        slots = [_Slot(p) for p in batch]
        for s in slots:
            if started >= s.req.deadline:
                s.error = DeadlineExceededError(f"deadline passed after {1000 * (started - s.req.arrival):.1f} ms "
                                                "in queue")
        live = [s for s in slots if s.error is None]
        stats = BatchStats(requests=len(batch))
        t0 = time.perf_counter()
        await self._recall(cat, [s for s in live if s.req.candidates is None])
        for s in live:
            if s.req.candidates is not None:
                given = _without(s.req.candidates, s.req.exclude)
                s.candidates = given[cat.servable(given)]
        t_recall = (time.perf_counter() - t0) * 1000
        t_cross = t_rank = 0.0
        groups: dict[tuple[str, int], list[_Slot]] = {}
        for s in live:
            groups.setdefault((s.req.model, s.req.version), []).append(s)
        for (model, version), members in groups.items():
            cross_ms, rank_ms = await self._score(cat, model, version, members, stats)
            t_cross += cross_ms
            t_rank += rank_ms
        stats.degraded = sum(s.degraded for s in live)
        stats.stage_ms = {"recall": t_recall, "cross": t_cross, "rank": t_rank}
        done = time.monotonic()
        return [s.error or _answer(s, started, done, stats.stage_ms, cat.version) for s in slots], stats

    async def _recall(self, cat: Catalogue, slots: list[_Slot]) -> None:
        """Candidates for the requests that gave none: one tower call and one search for all of
        them, from one recall stage (user tower version and its index always match); blocked
        items, and items of a later catalogue change, are dropped like excluded ones."""
        if not slots:
            return
        recall = self.recall
        n = self.settings.recall_n
        # ask for more than recall_n: excluded and blocked items are dropped from what comes back
        extra = max(s.req.exclude.size for s in slots) + min(cat.n_blocked, n)
        rows = np.asarray([s.req.user_row for s in slots], dtype=np.int64)
        try:
            # one call serves them all: it may take until the latest deadline; each request's own
            # deadline is enforced where it waits (serving.service), not by the batch
            emb = await recall.embed(rows, deadline=max(s.req.deadline for s in slots))
            sc, ids = recall.search(emb, n + extra)
            kind, degraded = recall.label, False
        except _DEGRADE_ON as err:
            log.warning("user tower failed, recalling popular items for %d requests: %s", len(slots), err)
            s1, i1 = recall.popular(n + extra)
            sc, ids = np.tile(s1, (len(slots), 1)), np.tile(i1, (len(slots), 1))
            kind, degraded = "popular", True
        for j, s in enumerate(slots):
            keep = cat.servable(ids[j])
            if s.req.exclude.size:
                keep &= ~np.isin(ids[j], s.req.exclude)
            s.candidates = ids[j][keep][:n].astype(np.int64)
            s.recall_scores = sc[j][keep][:n].astype(np.float32)
            s.recall, s.degraded = kind, degraded

    async def _score(self, cat: Catalogue, model: str, version: int, members: list[_Slot],
                     stats: BatchStats) -> tuple[float, float]:
        """Cross and rank the candidates of ``members`` with one version; returns (cross, rank) ms."""
        lens = [s.candidates.shape[0] for s in members]
        user_rows = np.repeat(np.asarray([s.req.user_row for s in members], dtype=np.int64), lens)
        item_rows = np.concatenate([s.candidates for s in members])
        stats.rows += int(item_rows.shape[0])
        t1 = time.perf_counter()
        try:
            inputs = self.crossing.inputs(cat.tables, user_rows, item_rows, self.catalog.cross_spec(model, version))
        except RankserveError as err:
            for s in members:
                s.error = err
            return 0.0, 0.0
        t2 = time.perf_counter()
        try:
            flat = await self.ranking.score(model, version, inputs, deadline=max(s.req.deadline for s in members))
            degraded = False
        except _DEGRADE_ON as err:
            log.warning("ranking %s v%s failed, degrading %d requests: %s", model, version, len(members), err)
            flat = np.concatenate([self._fallback_scores(cat, s) for s in members])
            degraded = True
        t3 = time.perf_counter()
        for s, part in zip(members, np.split(flat, np.cumsum(lens)[:-1]), strict=True):
            s.scores = part
            s.degraded = s.degraded or degraded
        if not any(s.degraded for s in members):
            self._maybe_shadow(model, members, inputs)
        return (t2 - t1) * 1000, (t3 - t2) * 1000

    @staticmethod
    def _fallback_scores(cat: Catalogue, s: _Slot) -> np.ndarray:
        """Degraded scores: the recall score, or item popularity for given candidates."""
        if s.recall_scores is not None:
            return s.recall_scores
        return cat.tables.popularity[s.candidates].astype(np.float32)

    def _maybe_shadow(self, model: str, members: list[_Slot], inputs: RankerInputs) -> None:
        """Score the shadowed share of this group with the shadow version, off the response path."""
        traffic = self._traffic.get(model)
        if traffic is None or traffic.shadow_version is None:
            return
        offsets = np.concatenate([[0], np.cumsum([s.candidates.shape[0] for s in members])])
        picked = [j for j, s in enumerate(members) if user_bucket(s.req.user_id) < traffic.shadow_percent]
        if not picked:
            return
        rows = np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in picked])
        live = [(members[j].scores, members[j].req.k) for j in picked]
        self.shadow.submit(model, traffic.shadow_version, inputs.rows(rows), live, members[0].req.deadline + 5.0)


def _without(ids: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    return ids[~np.isin(ids, exclude)] if exclude.size else ids


def _unit_interval(x: np.ndarray) -> np.ndarray:
    """``x`` rescaled into [0, 1] (order kept; all equal: all 1)."""
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    return (x - lo) / (hi - lo) if hi > lo else np.ones_like(x)


def _answer(s: _Slot, started: float, done: float, stage_ms: dict[str, float], catalogue_version: int) -> RankResponse:
    top = top_k(s.scores, s.req.k)
    if s.degraded:  # recall scores are not click probabilities: rescaled, the raw value beside them
        shown = _unit_interval(s.scores)
        items = [ScoredItem(int(s.candidates[j]), float(shown[j]), float(s.scores[j])) for j in top]
    else:
        items = [ScoredItem(int(s.candidates[j]), float(s.scores[j])) for j in top]
    return RankResponse(
        request_id=s.req.request_id,
        items=items,
        model_name=s.req.model,
        model_version=s.req.version,
        recall=s.recall,
        degraded=s.degraded,
        cold_start=s.req.cold_start,
        catalogue_version=catalogue_version,
        timings_ms={"queue": max(0.0, (started - s.req.arrival) * 1000), **stage_ms,
                    "total": (done - s.req.arrival) * 1000},
    )
