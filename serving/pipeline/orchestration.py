"""The ranking pipeline over a batch of requests: candidates -> features -> crossing -> ranking -> top-k.

Owns: resolving a validated request against one snapshot of the live state
(:meth:`RankPipeline.prepare`: the scenario, the request's limits checked against it, its context,
the model and version) and running a batch of them (:meth:`RankPipeline.run_batch`), one record
per request. A request carries the snapshot it was resolved against, and its answer is computed
from that snapshot alone; a batch whose requests hold different snapshots (a swap between two
prepares) runs each group on its own. A batch mixes scenarios: candidates are found per request
(one tower call and one search for all that need them), then every request scored by the same
(model, version) goes to Triton together, whatever its scenario. Each request fails alone: its
error takes its place in the output list. Must not touch: HTTP, gRPC, Ray, admission or files; the
model repository is seen through :class:`ModelRepository`, new live state arrives whole through
:attr:`RankPipeline.cell` (``serving.pipeline.state``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from kernels import CrossSpec, FeaturePlan
from serving.config import Settings
from serving.data.assembly import EncodedContextLike, RankerInputs
from serving.data.tables import DataTables
from serving.errors import DeadlineExceededError, RankserveError, ValidationError
from serving.pipeline.candidates import CandidateStage, Wanted
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.recall import Recall
from serving.pipeline.routing import Traffic, read_split, route_role, user_bucket
from serving.pipeline.scenario import Scenario, builtin_home
from serving.pipeline.shadow import ShadowScorer
from serving.pipeline.sources import DEGRADE_ON, Ask
from serving.pipeline.state import LiveCell, LiveState
from serving.pipeline.topk import diverse_top_k, top_k
from serving.schemas import RankRequest, RankResponse, ScoredItem

__all__ = ["BatchStats", "Crossing", "ModelRepository", "Prepared", "RankPipeline", "Ranking", "Recall"]

log = logging.getLogger(__name__)


class ModelRepository(Protocol):
    """What the pipeline reads of the model repository (``serving.repository.registry.ModelRegistry``)."""

    def models(self) -> list[str]: ...
    def traffic(self, model: str) -> Traffic: ...
    def cross_spec(self, model: str, version: int) -> CrossSpec: ...
    def version_dir(self, model: str, version: int) -> Path: ...


class Crossing(Protocol):
    """The crossing stage (``serving.pipeline.crossing.CrossingStage``)."""

    @property
    def backend(self) -> str: ...
    def plan(self, tables: DataTables, model: str, version: int, version_dir: Path,
             spec: CrossSpec | None) -> FeaturePlan: ...
    def inputs(self, tables: DataTables, plan: FeaturePlan, user_rows: np.ndarray,
               contexts: list[EncodedContextLike], req_of: np.ndarray, item_rows: np.ndarray) -> RankerInputs: ...


class Ranking(Protocol):
    """The ranking stage (``serving.pipeline.ranking.RankingStage``)."""

    async def score(self, model: str, version: int, inputs: RankerInputs, *, deadline: float) -> np.ndarray: ...


@dataclass
class Prepared:
    """A validated request, resolved against one snapshot of the live state: its scenario, the
    tables and the traffic split."""

    request_id: str
    user_id: int | str
    user_row: int
    cold_start: bool
    k: int
    model: str
    version: int
    candidates: np.ndarray | None  # the caller's known items' rows: unique, in request order; None: none given
    exclude: np.ndarray  # item rows (int64), the known ones
    arrival: float  # time.monotonic()
    deadline: float
    cost: int  # rows this request adds to a batch (batches are bounded by total candidates)
    scenario: Scenario
    live: LiveState  # the snapshot it was resolved against: its answer is computed from it
    context: EncodedContextLike  # the request's context, encoded with the data set's vocabularies
    seed: int | None = None  # item_id's row
    unknown_candidates: int | None = None  # given candidates not in the catalogue (None: none given)
    groups: Mapping[str, int] = field(default_factory=dict)  # item groups' codes the context gives
    shop: int | None = None  # shop_id
    role: str = "live"  # the version's role in the traffic split: live or canary

    def wanted(self) -> Wanted:
        """What it asks of the candidate stage."""
        return Wanted(self.scenario, Ask(self.user_row, self.seed, self.shop, self.candidates, self.exclude,
                                         self.deadline, self.context, self.groups))


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
    group_scenarios: list[int] = field(default_factory=list)  # scenarios per (model, version) sent to Triton


class RankPipeline:
    """Ranks batches of prepared requests.

    Args:
        settings: limits and defaults.
        tables: user/item features (the catalogue before any change).
        repository: model versions, crossing specs and traffic.
        recall: the recall stage (user tower + index of one version).
        crossing: the crossing stage.
        ranking: the ranking stage.
    """

    def __init__(self, settings: Settings, tables: DataTables, repository: ModelRepository, recall: Recall,
                 crossing: Crossing, ranking: Ranking) -> None:
        self.settings = settings
        self.repository = repository
        self.crossing = crossing
        self.ranking = ranking
        self.candidates = CandidateStage()
        self.home = builtin_home(settings)
        # everything followed, swapped whole (serving.repository.followers publish into it)
        self.cell = LiveCell(LiveState.first(read_split(repository, settings.user_tower_model), recall,
                                             Catalogue.initial(tables), self.home))
        self.shadow = ShadowScorer(lambda m, v, x, d: ranking.score(m, v, x, deadline=d))

    # -- the live state -----------------------------------------------------------------
    @property
    def live(self) -> LiveState:
        """The current snapshot of everything followed (read it once, use that one)."""
        return self.cell.current

    @property
    def catalogue(self) -> Catalogue:
        """The current snapshot's catalogue."""
        return self.cell.current.catalogue

    @property
    def recall(self) -> Recall:
        """The current snapshot's recall stage (user tower version and its index)."""
        return self.cell.current.recall

    @property
    def scenarios(self) -> Mapping[str, Scenario]:
        """The current snapshot's scenarios."""
        return self.cell.current.scenarios

    @property
    def traffic_split(self) -> Mapping[str, Traffic]:
        """The current snapshot's traffic split of every ranking model."""
        return self.cell.current.traffic

    def set_scenarios(self, scenarios: Mapping[str, Scenario]) -> None:
        """Serve these scenarios from now on (a new snapshot); without a ``home``, the built-in one."""
        self.cell.publish(lambda state: state.with_scenarios(scenarios))

    # -- per request, before batching ---------------------------------------------------
    def prepare(self, req: RankRequest, *, arrival: float | None = None, live: LiveState | None = None) -> Prepared:
        """Resolve a validated request against one snapshot (``live``; default: the current one)
        under its scenario; checks that need the scenario or the tables (limits, context, unknown
        items, model).

        Raises:
            ScenarioNotFoundError: unknown scenario (404).
            ValidationError: beyond the scenario's limits, missing or unknown context, unknown
                candidate ids, candidates the scenario does not take (422).
            ModelNotFoundError: unknown model (404).
        """
        now = time.monotonic() if arrival is None else arrival
        state = self.live if live is None else live
        sc = state.scenario(req.scenario)
        k, timeout_ms = _within_limits(req, sc, self.settings)
        model = req.model or sc.spec.ranker  # a request's model overrides the scenario's ranker
        version, role = route_role(state.split(model), req.user_id)
        cat = state.catalogue
        _check_id_kinds(cat.tables, req)
        context = cat.tables.encode_context(req.context)
        row, cold = cat.tables.user_row(req.user_id)
        seed, shop = _context(cat, req, sc)
        _check_groups(cat, context.scopes, sc)
        candidates, unknown = (None, None) if req.candidates is None else _given(cat, req.candidates)
        given = sc.spec.given
        if given is not None and given.required and candidates is None:
            raise ValidationError(f"scenario {sc.name!r} ranks the caller's candidates: give candidates",
                                  field="candidates")
        if candidates is not None and given is not None and given.mode == "exclusive":
            cost = int(candidates.shape[0])
        else:
            extra = 0 if candidates is None else int(candidates.shape[0])
            cost = min(sc.source_total + extra, sc.max_candidates)
        return Prepared(request_id=req.request_id or uuid.uuid4().hex, user_id=req.user_id, user_row=row,
                        cold_start=cold, k=k, model=model, version=version, candidates=candidates,
                        exclude=_known_rows(cat, req.exclude), arrival=now,
                        deadline=now + timeout_ms / 1000.0, cost=cost, scenario=sc, live=state,
                        context=context, seed=seed, shop=shop, unknown_candidates=unknown,
                        groups=context.scopes, role=role)

    # -- per batch ----------------------------------------------------------------------
    async def run_batch(self, batch: list[Prepared]) -> tuple[list[RankResponse | RankserveError], BatchStats]:
        """Rank a batch: per snapshot its requests hold (almost always one), one user-tower call,
        one index search, one crossing launch and chunked ranker calls per (model, version), then
        top-k. Returns one answer or error per request."""
        started = time.monotonic()
        slots = [_Slot(p) for p in batch]
        for s in slots:
            if started >= s.req.deadline:
                s.error = DeadlineExceededError(f"deadline passed after {1000 * (started - s.req.arrival):.1f} ms "
                                                "in queue")
        live = [s for s in slots if s.error is None]
        stats = BatchStats(requests=len(batch), stage_ms=dict.fromkeys(("recall", "cross", "rank"), 0.0))
        snapshots: dict[LiveState, list[_Slot]] = {}  # by identity: a swap between two prepares splits a batch
        for s in live:
            snapshots.setdefault(s.req.live, []).append(s)
        for state, members in snapshots.items():
            await self._run_on(state, members, stats)
        stats.degraded = sum(s.degraded for s in live)
        done = time.monotonic()
        return [s.error or _answer(s, started, done, stats.stage_ms) for s in slots], stats

    async def _run_on(self, state: LiveState, members: list[_Slot], stats: BatchStats) -> None:
        """Find, cross and rank the candidates of ``members``, all resolved against ``state``."""
        t0 = time.perf_counter()
        # one recall stage for them: user tower version and its index always match; blocked
        # items, and items of a later catalogue change, are dropped like excluded ones
        found = await self.candidates.find(state.catalogue, state.recall, [s.req.wanted() for s in members])
        for s, f in zip(members, found, strict=True):
            s.candidates, s.recall_scores, s.recall, s.degraded = f.ids, f.fallback, f.label, f.degraded
        stats.stage_ms["recall"] += (time.perf_counter() - t0) * 1000
        groups: dict[tuple[str, int], list[_Slot]] = {}  # by model version only: scenarios share Triton calls
        for s in members:
            groups.setdefault((s.req.model, s.req.version), []).append(s)
        for (model, version), group in groups.items():
            stats.group_scenarios.append(len({s.req.scenario.name for s in group}))
            cross_ms, rank_ms = await self._score(state, model, version, group, stats)
            stats.stage_ms["cross"] += cross_ms
            stats.stage_ms["rank"] += rank_ms

    async def _score(self, state: LiveState, model: str, version: int, members: list[_Slot],
                     stats: BatchStats) -> tuple[float, float]:
        """Cross and rank the candidates of ``members`` with one version; returns (cross, rank) ms."""
        cat = state.catalogue
        lens = [s.candidates.shape[0] for s in members]
        user_rows = np.asarray([s.req.user_row for s in members], dtype=np.int64)
        req_of = np.repeat(np.arange(len(members), dtype=np.int64), lens)
        item_rows = np.concatenate([s.candidates for s in members])
        stats.rows += int(item_rows.shape[0])
        t1 = time.perf_counter()
        try:
            plan = self.crossing.plan(cat.tables, model, version, self.repository.version_dir(model, version),
                                      self._cross_spec(model, version))
            inputs = self.crossing.inputs(cat.tables, plan, user_rows, [s.req.context for s in members], req_of,
                                          item_rows)
        except RankserveError as err:
            for s in members:
                s.error = err
            return 0.0, 0.0
        t2 = time.perf_counter()
        try:
            flat = await self.ranking.score(model, version, inputs, deadline=max(s.req.deadline for s in members))
            degraded = False
        except DEGRADE_ON as err:
            log.warning("ranking %s v%s failed, degrading %d requests: %s", model, version, len(members), err)
            flat = np.concatenate([_fallback_scores(cat, s) for s in members])
            degraded = True
        t3 = time.perf_counter()
        for s, part in zip(members, np.split(flat, np.cumsum(lens)[:-1]), strict=True):
            s.scores = part
            s.degraded = s.degraded or degraded
        if not any(s.degraded for s in members):
            self._maybe_shadow(state.traffic.get(model), model, members, inputs)
        return (t2 - t1) * 1000, (t3 - t2) * 1000

    def _cross_spec(self, model: str, version: int) -> CrossSpec | None:
        """The crossing spec a version records; None when it records none (it declares its features)."""
        try:
            return self.repository.cross_spec(model, version)
        except RankserveError:
            return None

    def _maybe_shadow(self, traffic: Traffic | None, model: str, members: list[_Slot], inputs: RankerInputs) -> None:
        """Score the shadowed share of this group with the shadow version, off the response path."""
        if traffic is None or traffic.shadow_version is None:
            return
        offsets = np.concatenate([[0], np.cumsum([s.candidates.shape[0] for s in members])])
        picked = [j for j, s in enumerate(members) if user_bucket(s.req.user_id) < traffic.shadow_percent]
        if not picked:
            return
        rows = np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in picked])
        live = [(members[j].scores, members[j].req.k) for j in picked]
        self.shadow.submit(model, traffic.shadow_version, inputs.rows(rows), live, members[0].req.deadline + 5.0)


def _within_limits(req: RankRequest, sc: Scenario, settings: Settings) -> tuple[int, int]:
    """The request's ``k`` and ``timeout_ms`` under the scenario's limits (defaults when absent):
    the one check of the request's limits. A scenario's limits lie within the global ones; a
    message names the scenario where its limit is below the global one.

    Raises:
        ValidationError: beyond a limit (422).
    """
    def where(limit: int, cap: int) -> str:
        return f" for scenario {sc.name!r}" if limit < cap else ""

    if req.k is not None and req.k > sc.max_k:
        raise ValidationError(f"k must be in [1, {sc.max_k}]{where(sc.max_k, settings.max_k)}, got {req.k}",
                              field="k")
    if req.candidates is not None:
        if not req.candidates:
            raise ValidationError("candidates must not be empty (omit it to use recall)", field="candidates")
        if sc.spec.given is None:
            raise ValidationError(f"scenario {sc.name!r} takes no candidates", field="candidates")
        if len(req.candidates) > sc.max_candidates:
            raise ValidationError(f"at most {sc.max_candidates} candidates per request"
                                  f"{where(sc.max_candidates, settings.max_candidates)}, got {len(req.candidates)}",
                                  field="candidates")
    if len(req.exclude) > settings.max_exclude:
        raise ValidationError(f"at most {settings.max_exclude} exclude ids, got {len(req.exclude)}", field="exclude")
    if req.timeout_ms is not None and req.timeout_ms > sc.max_timeout_ms:
        raise ValidationError(f"timeout_ms must be in [1, {sc.max_timeout_ms}]"
                              f"{where(sc.max_timeout_ms, settings.max_timeout_ms)}, got {req.timeout_ms}",
                              field="timeout_ms")
    return req.k or sc.default_k, req.timeout_ms or sc.timeout_ms


def _check_id_kinds(tables: DataTables, req: RankRequest) -> None:
    """The request's ids are of the kind the data set's are (integers or strings).

    Raises:
        ValidationError: naming the first id of the other kind (``user_id``, ``candidates[2]``).
    """
    items = [("item_id", req.item_id)] if req.item_id is not None else []
    items += [(f"candidates[{k}]", v) for k, v in enumerate(req.candidates or ())]
    items += [(f"exclude[{k}]", v) for k, v in enumerate(req.exclude)]
    for where, value, ids, what in [("user_id", req.user_id, tables.user_ids, "users"),
                                    *((w, v, tables.item_ids, "items") for w, v in items)]:
        strings = ids.dtype == object
        if isinstance(value, str) != strings:
            kind = "string" if strings else "integer"
            raise ValidationError(f"{where} must be {_a(kind)} {kind} (the data set's {what} have {kind} ids), got "
                                  f"{value!r}", field=where)


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _known_rows(cat: Catalogue, ids: list[int | str]) -> np.ndarray:
    """The rows of the ids the catalogue knows (int64), the others left out."""
    rows, known = cat.tables.item_rows(ids)
    return rows[known]


def _context(cat: Catalogue, req: RankRequest, sc: Scenario) -> tuple[int | None, int | None]:
    """The seed item's row and the shop the scenario needs, checked against the catalogue (context
    the scenario does not use is ignored)."""
    seed = shop = None
    seed_row = -1 if req.item_id is None else int(cat.tables.item_rows([req.item_id])[0][0])
    known = seed_row >= 0
    if sc.spec.needs_seed:
        if req.item_id is None:
            raise ValidationError(f"scenario {sc.name!r} needs item_id (the seed item)", field="item_id")
        if not known:
            raise ValidationError(f"unknown item_id {req.item_id!r} (not in the catalogue)", field="item_id")
        seed = seed_row
    elif sc.spec.filters.exclude_seed and known:
        seed = seed_row  # only excluded: an unknown seed is in no list
    if sc.spec.needs_shop:
        if req.shop_id is None:
            raise ValidationError(f"scenario {sc.name!r} needs shop_id", field="shop_id")
        if not cat.has_group("shop", req.shop_id):
            raise ValidationError(f"shop_id {req.shop_id} has no items in the catalogue", field="shop_id")
        shop = req.shop_id
    return seed, shop


def _check_groups(cat: Catalogue, given: Mapping[str, int], sc: Scenario) -> None:
    """The group values the scenario needs from the request's context (``request:<group>``) are
    there, and some item holds each.

    Raises:
        ValidationError: one is missing, or no item of the catalogue has that value (``context.<group>``).
    """
    for group in sc.spec.needs_groups:
        if group not in given:
            raise ValidationError(f"scenario {sc.name!r} needs context.{group}", field=f"context.{group}")
        if not cat.has_group(group, given[group]):
            raise ValidationError(f"context.{group}: no item of the catalogue has that {group}",
                                  field=f"context.{group}")


def _given(cat: Catalogue, ids: list[int | str]) -> tuple[np.ndarray, int]:
    """The rows of the given candidates the catalogue knows, duplicates dropped, request order kept
    (the limits checked that the scenario takes them), and how many given ids it does not know
    (dropped, never a refusal of the request)."""
    rows, known = cat.tables.item_rows(ids)
    rows = rows[known]
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)], int((~known).sum())


def _fallback_scores(cat: Catalogue, s: _Slot) -> np.ndarray:
    """Degraded scores: the recall score, or item popularity for given candidates."""
    if s.recall_scores is not None:
        return s.recall_scores
    return cat.tables.popularity[s.candidates].astype(np.float32)


def _unit_interval(x: np.ndarray) -> np.ndarray:
    """``x`` rescaled into [0, 1] (order kept; all equal: all 1)."""
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    return (x - lo) / (hi - lo) if hi > lo else np.ones_like(x)


def _answer(s: _Slot, started: float, done: float, stage_ms: dict[str, float]) -> RankResponse:
    sc, cat = s.req.scenario, s.req.live.catalogue
    div = sc.spec.diversity
    if div is None:
        top = top_k(s.scores, s.req.k)
    else:
        top = diverse_top_k(s.scores, s.req.k, cat.group_of(s.candidates, div.per), div.max_items)
    ids = cat.tables.item_ids[s.candidates[np.asarray(top, dtype=np.int64)]].tolist()  # the data set's ids
    if s.degraded:  # recall scores are not click probabilities: rescaled, the raw value beside them
        shown = _unit_interval(s.scores)
        items = [ScoredItem(ids[i], float(shown[j]), float(s.scores[j])) for i, j in enumerate(top)]
    else:
        items = [ScoredItem(ids[i], float(s.scores[j])) for i, j in enumerate(top)]
    return RankResponse(
        request_id=s.req.request_id,
        items=items,
        model_name=s.req.model,
        model_version=s.req.version,
        recall=s.recall,
        degraded=s.degraded,
        cold_start=s.req.cold_start,
        catalogue_version=cat.version,
        scenario=sc.name,
        scenario_version=sc.version,
        unknown_candidates=s.req.unknown_candidates,
        model_role=s.req.role,
        timings_ms={"queue": max(0.0, (started - s.req.arrival) * 1000), **stage_ms,
                    "total": (done - s.req.arrival) * 1000},
    )
