"""The ranking pipeline over a batch of requests: recall -> features -> crossing -> ranking -> top-k.

A plain class: the Serve deployment batches requests and hands them here; tests drive it
directly. Each request fails alone (its error object takes its place in the output list).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from serving.config import Settings
from serving.errors import (
    BackendUnavailableError,
    DeadlineExceededError,
    ModelNotFoundError,
    RankserveError,
    TritonError,
    ValidationError,
)
from serving.pipeline.crossing import CrossingStage
from serving.pipeline.features import FeatureTables, RankerInputs
from serving.pipeline.ranking import RankingStage
from serving.pipeline.recall import RecallStage
from serving.repository.registry import ModelRegistry, Traffic, user_bucket
from serving.schemas import RankRequest, RankResponse, ScoredItem

__all__ = ["BatchStats", "Prepared", "RankPipeline", "ShadowStats"]

log = logging.getLogger(__name__)


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
class ShadowStats:
    """How a shadow version's answers compare with the live version's, over shadowed requests."""

    requests: int = 0
    spearman_sum: float = 0.0
    overlap_sum: float = 0.0
    mean_abs_score_diff_sum: float = 0.0
    failures: int = 0

    def to_json(self) -> dict[str, float | int]:
        n = max(self.requests, 1)
        return {"requests": self.requests, "failures": self.failures,
                "rank_correlation": round(self.spearman_sum / n, 4), "overlap_at_k": round(self.overlap_sum / n, 4),
                "mean_abs_score_diff": round(self.mean_abs_score_diff_sum / n, 5)}


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
        tables: user/item features.
        registry: model versions and traffic.
        recall: the recall stage (user tower + FAISS index of one version).
        crossing: the crossing stage.
        ranking: the ranking stage.
    """

    def __init__(
        self,
        settings: Settings,
        tables: FeatureTables,
        registry: ModelRegistry,
        recall: RecallStage,
        crossing: CrossingStage,
        ranking: RankingStage,
    ) -> None:
        self.settings = settings
        self.tables = tables
        self.registry = registry
        self.recall = recall
        self.crossing = crossing
        self.ranking = ranking
        self._traffic: dict[str, Traffic] = {}
        self.shadow: dict[tuple[str, int], ShadowStats] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.refresh_traffic()

    # -- per request, before batching ---------------------------------------------------
    def refresh_traffic(self) -> None:
        """Re-read the traffic split of every ranking model (after a push or rollback)."""
        self._traffic = {
            m: self.registry.traffic(m) for m in self.registry.models() if m != self.settings.user_tower_model
        }

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
        version = self.registry.route(self.traffic(model), req.user_id)
        row, cold = self.tables.user_row(req.user_id)
        candidates = None
        if req.candidates is not None:
            cand = np.asarray(req.candidates, dtype=np.int64)
            unknown = self.tables.unknown_items(cand)
            if unknown.size:
                shown = ", ".join(map(str, unknown[:5].tolist()))
                raise ValidationError(
                    f"{unknown.size} unknown item id(s) in candidates: {shown}"
                    f" (valid ids are 0..{self.tables.n_items - 1})",
                    field="candidates",
                )
            _, first = np.unique(cand, return_index=True)
            candidates = cand[np.sort(first)]
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

    # -- per batch ----------------------------------------------------------------------
    async def run_batch(self, batch: list[Prepared]) -> tuple[list[RankResponse | RankserveError], BatchStats]:
        """Rank a batch: one user-tower call, one FAISS search, one crossing launch, chunked ranker calls."""
        stats = BatchStats(requests=len(batch))
        results: list[RankResponse | RankserveError | None] = [None] * len(batch)
        now = time.monotonic()
        live: list[int] = []
        for i, p in enumerate(batch):
            if now >= p.deadline:
                results[i] = DeadlineExceededError(f"deadline passed after {1000 * (now - p.arrival):.1f} ms in queue")
            else:
                live.append(i)

        # 1. recall for requests without candidates
        t0 = time.perf_counter()
        cands: dict[int, np.ndarray] = {}
        recall_scores: dict[int, np.ndarray] = {}
        recall_kind: dict[int, str] = {}
        degraded: set[int] = set()
        need = [i for i in live if batch[i].candidates is None]
        if need:
            # one recall stage per batch: user tower version and its index always match
            await self._recall(self.recall, batch, need, cands, recall_scores, recall_kind, degraded)
        for i in live:
            p = batch[i]
            if p.candidates is not None:
                c = p.candidates
                if p.exclude.size:
                    c = c[~np.isin(c, p.exclude)]
                cands[i] = c
                recall_kind[i] = "given"
        t_recall = (time.perf_counter() - t0) * 1000

        # 2-4. features + crossing, then ranking, per (model, version) group
        t_cross = t_rank = 0.0
        scores: dict[int, np.ndarray] = {}
        groups: dict[tuple[str, int], list[int]] = {}
        for i in live:
            groups.setdefault((batch[i].model, batch[i].version), []).append(i)
        for (model, version), members in groups.items():
            lens = [cands[i].shape[0] for i in members]
            user_rows = np.repeat(np.asarray([batch[i].user_row for i in members], dtype=np.int64), lens)
            item_rows = np.concatenate([cands[i] for i in members]) if members else np.empty(0, np.int64)
            stats.rows += int(item_rows.shape[0])
            t1 = time.perf_counter()
            try:
                spec = self.registry.cross_spec(model, version)
                inputs = self.crossing.inputs(user_rows, item_rows, spec)
            except RankserveError as err:
                for i in members:
                    results[i] = err
                continue
            t2 = time.perf_counter()
            t_cross += (t2 - t1) * 1000
            deadline = min(batch[i].deadline for i in members)
            try:
                flat = await self.ranking.score(model, version, inputs, deadline=deadline)
            except (TritonError, BackendUnavailableError, DeadlineExceededError) as err:
                log.warning("ranking %s v%s failed, degrading %d requests: %s", model, version, len(members), err)
                flat = self._fallback_scores(members, cands, recall_scores)
                degraded.update(members)
            t_rank += (time.perf_counter() - t2) * 1000
            parts = np.split(flat, np.cumsum(lens)[:-1])
            for i, part in zip(members, parts, strict=True):
                scores[i] = part
            if not degraded.intersection(members):
                self._maybe_shadow(model, batch, members, lens, inputs, parts)

        # 5. top-k
        done = time.monotonic()
        for i in live:
            if results[i] is not None:
                continue
            p = batch[i]
            c, s = cands[i], scores[i]
            top = _top_k(s, p.k)
            results[i] = RankResponse(
                request_id=p.request_id,
                items=[ScoredItem(int(c[j]), float(s[j])) for j in top],
                model_name=p.model,
                model_version=p.version,
                recall=recall_kind[i],
                degraded=i in degraded,
                cold_start=p.cold_start,
                timings_ms={
                    "queue": max(0.0, (now - p.arrival) * 1000),
                    "recall": t_recall,
                    "cross": t_cross,
                    "rank": t_rank,
                    "total": (done - p.arrival) * 1000,
                },
            )
        stats.degraded = len(degraded)
        stats.stage_ms = {"recall": t_recall, "cross": t_cross, "rank": t_rank}
        out = [r if r is not None else RankserveError("request was not answered") for r in results]
        if len(out) != len(batch):  # the batch contract: one answer per request
            raise RuntimeError(f"pipeline produced {len(out)} answers for {len(batch)} requests")
        return out, stats

    async def _recall(
        self,
        recall: RecallStage,
        batch: list[Prepared],
        need: list[int],
        cands: dict[int, np.ndarray],
        recall_scores: dict[int, np.ndarray],
        recall_kind: dict[int, str],
        degraded: set[int],
    ) -> None:
        n = self.settings.recall_n
        extra = max(batch[i].exclude.size for i in need)
        rows = np.asarray([batch[i].user_row for i in need], dtype=np.int64)
        try:
            emb = await recall.embed(rows, deadline=min(batch[i].deadline for i in need))
            sc, ids = recall.search(emb, n + extra)
            kind = "faiss"
        except (TritonError, BackendUnavailableError, DeadlineExceededError) as err:
            log.warning("user tower failed, recalling popular items for %d requests: %s", len(need), err)
            s1, i1 = recall.popular(n + extra)
            sc, ids = np.tile(s1, (len(need), 1)), np.tile(i1, (len(need), 1))
            kind = "popular"
            degraded.update(need)
        for j, i in enumerate(need):
            keep = ids[j] >= 0
            if batch[i].exclude.size:
                keep &= ~np.isin(ids[j], batch[i].exclude)
            cands[i] = ids[j][keep][:n].astype(np.int64)
            recall_scores[i] = sc[j][keep][:n].astype(np.float32)
            recall_kind[i] = kind

    def _maybe_shadow(self, model: str, batch: list[Prepared], members: list[int], lens: list[int],
                      inputs: object, parts: list[np.ndarray]) -> None:
        """Score the shadowed share of this group with the shadow version, off the response path."""
        traffic = self._traffic.get(model)
        if traffic is None or traffic.shadow_version is None:
            return
        offsets = np.concatenate([[0], np.cumsum(lens)])
        picked = [j for j, i in enumerate(members) if user_bucket(batch[i].user_id) < traffic.shadow_percent]
        if not picked:
            return
        rows = np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in picked])
        sub = RankerInputs(cat=inputs.cat[rows], dense=inputs.dense[rows])  # type: ignore[attr-defined]
        live = [(parts[j], batch[members[j]].k) for j in picked]
        task = asyncio.get_running_loop().create_task(
            self._shadow_score(model, traffic.shadow_version, sub, live, batch[members[0]].deadline + 5.0)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow_score(self, model: str, version: int, inputs: RankerInputs,
                            live: list[tuple[np.ndarray, int]], deadline: float) -> None:
        stats = self.shadow.setdefault((model, version), ShadowStats())
        try:
            flat = await self.ranking.score(model, version, inputs, deadline=deadline)
        except RankserveError:
            stats.failures += 1
            return
        lens = [p.shape[0] for p, _ in live]
        for (base, k), shadow in zip(live, np.split(flat, np.cumsum(lens)[:-1]), strict=True):
            if base.size < 2:
                continue
            stats.requests += 1
            stats.spearman_sum += _spearman(base, shadow)
            a, b = set(_top_k(base, k).tolist()), set(_top_k(shadow, k).tolist())
            stats.overlap_sum += len(a & b) / max(len(a), 1)
            stats.mean_abs_score_diff_sum += float(np.mean(np.abs(base - shadow)))

    def _fallback_scores(
        self, members: list[int], cands: dict[int, np.ndarray], recall_scores: dict[int, np.ndarray]
    ) -> np.ndarray:
        """Degraded scores: the recall score, or item popularity for given candidates."""
        parts = []
        for i in members:
            if i in recall_scores:
                parts.append(recall_scores[i])
            else:
                parts.append(self.tables.item_num[cands[i], 2].astype(np.float32))
        return np.concatenate(parts) if parts else np.empty(0, np.float32)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else 1.0


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` highest scores, highest first (stable on ties)."""
    n = scores.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.lexsort((np.arange(n), -scores))
