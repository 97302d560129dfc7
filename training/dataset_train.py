"""Default models for any data set: the two-tower recall model and the DCN-v2 ranker, from its impressions.

Owns: the holdout (the latest 10% by time when the schema declares ``impressions.time``, else a
seeded random 10%), the training loops over a data set's encoded tables and impressions, and the
holdout figures (AUC, log loss, ECE, recall@500, NDCG@20). The ranker reads the serving path's own
assembly (``serving.data.assembly.feature_table``) over a feature declaration (default:
``serving.data.default_features``); the user tower reads ``serving.data.tower.tower_inputs``,
whose sequence blocks are computed here in-graph from the item tower being trained, so the
exported tower expects exactly what serving feeds it (the mean of the item tower's embeddings of
a request's sequence items). Must not touch: the model repository (``training.dataset_export``
writes the result), the data set's files (read through ``serving.data.store``), serving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from kernels import FeaturePlan, get_crosser
from serving.data.assembly import IMPRESSION_COLUMNS, ContextColumns, feature_table
from serving.data.features import FeatureSpec, resolve
from serving.data.tables import DataTables
from serving.data.tower import tower_inputs, tower_widths
from serving.terminal import task
from training.metrics import auc, ndcg_at_k
from training.models import DCNv2Ranker, ItemTower, UserTower
from training.quality import calibration
from training.train import fit_ranker, fit_two_tower

__all__ = ["HOLDOUT_FRACTION", "RECALL_N", "TrainedDataSet", "TrainingData", "holdout_mask", "prepare",
           "context_rows", "ndcg_at", "pair_agreement", "ranker_scores", "recall_at", "request_ids", "train_data_set",
           "user_embeddings"]

HOLDOUT_FRACTION = 0.1
RECALL_N = 500
NDCG_K = 20


@dataclass(frozen=True)
class TrainingData:
    """A data set's impressions ready for training: rows, labels, contexts, the holdout and the requests.

    Attributes:
        users, items: int64 [N] user and item rows of each impression.
        labels: float32 [N], 0/1.
        context: every impression's context, column by column.
        test: bool [N], the holdout.
        request: int64 [N], the request each impression belongs to (same user and time; same user
            when the schema declares no time): what NDCG ranks within.
        impressions: the encoded impressions as stored (``feature_table`` reads them).
    """

    tables: DataTables
    impressions: pa.Table
    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    context: ContextColumns
    test: np.ndarray
    request: np.ndarray


def _times(impressions: pa.Table) -> np.ndarray | None:
    name = IMPRESSION_COLUMNS["time"]
    if name not in impressions.column_names:
        return None
    column = impressions.column(name).combine_chunks()
    if pa.types.is_temporal(column.type):
        column = column.cast(pa.timestamp("us")) if not pa.types.is_timestamp(column.type) else column
        column = column.cast(pa.int64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def holdout_mask(n: int, times: np.ndarray | None, seed: int, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """bool [n]: the latest ``fraction`` by ``times`` (ties broken by row order), else a seeded random ``fraction``."""
    k = max(1, int(round(n * fraction)))
    order = np.argsort(times, kind="stable") if times is not None else np.random.default_rng(seed).permutation(n)
    test = np.zeros(n, bool)
    test[order[n - k:]] = True
    return test


def prepare(tables: DataTables, impressions: pa.Table, *, seed: int) -> TrainingData:
    """The impressions of a data set as :class:`TrainingData` (the holdout drawn with ``seed``)."""
    cols = IMPRESSION_COLUMNS
    users = impressions.column(cols["user"]).to_numpy().astype(np.int64)
    items = impressions.column(cols["item"]).to_numpy().astype(np.int64)
    labels = impressions.column(cols["label"]).to_numpy().astype(np.float32)
    times = _times(impressions)
    return TrainingData(tables, impressions, users, items, labels, ContextColumns.of_table(tables.schema, impressions),
                        holdout_mask(users.shape[0], times, seed), request_ids(users, times))


def request_ids(users: np.ndarray, times: np.ndarray | None) -> np.ndarray:
    """int64 [N]: each impression's request, the impressions of one user at one time; of one user
    when there are no times, or when the times make requests of fewer than two impressions on
    average (a log that stamps every impression apart)."""
    if times is not None:
        _, request = np.unique(np.stack([users, times.astype(np.int64)], axis=1), axis=0, return_inverse=True)
        if 2 * (int(request.max(initial=-1)) + 1) <= users.shape[0]:
            return request.reshape(-1).astype(np.int64)
    return np.unique(users, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _cards(tables: DataTables, names: list[str]) -> list[int]:
    return [len(tables.vocab.get(n, {})) + 1 for n in names]


@dataclass
class TrainedDataSet:
    """The trained models, what they were trained on, and their holdout figures."""

    data: TrainingData
    spec: FeatureSpec
    plan: FeaturePlan
    ranker: DCNv2Ranker
    user_tower: UserTower
    item_tower: ItemTower
    item_emb: np.ndarray
    cat: np.ndarray  # the ranker's inputs of every impression (feature_table)
    dense: np.ndarray
    metrics: dict[str, Any]


def _matrix(table: pa.Table, column: str, width: int) -> np.ndarray:
    flat = table.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(table.num_rows, width))


def train_ranker(data: TrainingData, spec: FeatureSpec, *, epochs: int, seed: int, batch: int = 2048,
                 min_steps: int = 150) -> tuple[DCNv2Ranker, FeaturePlan, np.ndarray, np.ndarray]:
    """DCN-v2 with BCE on the training impressions, its inputs ``feature_table`` over ``spec``; at
    least ``min_steps`` steps (a small data set gets more epochs)."""
    torch.manual_seed(seed)
    plan = resolve(spec, data.tables)
    train = np.flatnonzero(~data.test)
    steps = -(-train.size // batch)
    epochs = max(epochs, -(-min_steps // steps))
    with task("train ranker", total=1 + epochs * steps) as bar:
        bar.describe("train ranker: features")
        table = feature_table(data.tables, data.impressions, spec, get_crosser("auto"))
        cat = _matrix(table, "cat", max(1, plan.n_cat)).astype(np.int64)  # (a constant column when 0)
        dense = _matrix(table, "dense", max(1, plan.n_dense)).astype(np.float32)
        bar.advance()
        model = DCNv2Ranker([int(c) for c in plan.cardinalities], dense.shape[1], sparse=True)
        opts: list[torch.optim.Optimizer] = [
            torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("embs.")], lr=2e-3)]
        if len(model.embs):
            opts.append(torch.optim.SparseAdam(list(model.embs.parameters()), lr=2e-3))
        fit_ranker(model, torch.from_numpy(cat), torch.from_numpy(dense), torch.from_numpy(data.labels)[:, None],
                   train, opts, epochs=epochs, batch=batch, seed=seed, bar=bar)
    return model.eval(), plan, cat, dense


class _ItemTables:
    """The item tower's inputs as tensors, and the in-graph mean embedding of request sequences."""

    def __init__(self, tables: DataTables) -> None:
        self.cat = torch.from_numpy(np.array(tables.item_cat))
        self.num = torch.from_numpy(np.array(tables.item_num))
        self.vec = torch.from_numpy(np.array(tables.item_vec))

    def embed(self, tower: ItemTower, rows: torch.Tensor) -> torch.Tensor:
        return tower(self.cat[rows], self.num[rows], self.vec[rows])

    def sequence_means(self, tower: ItemTower, context: ContextColumns, req: np.ndarray, dim: int) -> list[torch.Tensor]:
        """Per context sequence, float [len(req), dim]: the mean item-tower embedding of the items
        of requests ``req`` (zeros when empty), as ``tower_inputs`` computes it from ``item_emb``."""
        out = []
        for offsets, rows in context.sequences:
            lengths = offsets[req + 1] - offsets[req]
            seg = np.repeat(np.arange(req.shape[0]), lengths)
            flat = rows[_flat_positions(offsets, req)]
            sums = torch.zeros(req.shape[0], dim)
            if flat.size:
                sums = sums.index_add(0, torch.from_numpy(seg), self.embed(tower, torch.from_numpy(flat)))
            out.append(sums / torch.from_numpy(np.maximum(lengths, 1).astype(np.float32))[:, None])
        return out


def _user_batch(data: TrainingData, req: np.ndarray, items: _ItemTables, item_tower: ItemTower,
                dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The user tower's inputs of impressions ``req``, the sequence means computed in-graph."""
    base = tower_inputs(data.tables, data.users[req], _rows(data.context, req), None)
    dense = torch.cat([torch.from_numpy(base["user_dense"]),
                       *items.sequence_means(item_tower, data.context, req, dim)], dim=1)
    return torch.from_numpy(base["user_cat"]), dense


def _rows(context: ContextColumns, req: np.ndarray) -> ContextColumns:
    """The contexts of impressions ``req`` (no sequence: the tower's sequence blocks are added apart)."""
    empty = tuple((np.zeros(req.shape[0] + 1, np.int64), np.zeros(0, np.int64)) for _ in context.sequences)
    return ContextColumns(cat=context.cat[req], num=context.num[req], sequences=empty)


def train_towers(data: TrainingData, *, epochs: int, seed: int, batch: int = 512, emb_dim: int = 32,
                 temperature: float = 0.05, min_steps: int = 300) -> tuple[UserTower, ItemTower]:
    """In-batch softmax on the clicked training impressions; at least ``min_steps`` steps."""
    torch.manual_seed(seed)
    t, schema = data.tables, data.tables.schema
    n_seq = len(schema.context.sequences)
    user_cards = _cards(t, tower_widths(schema, emb_dim)["cat"])  # (the constant column: one row)
    dense_dim = max(1, t.user_num.shape[1] + data.context.num.shape[1] + t.user_vec.shape[1] + emb_dim * n_seq)
    user = UserTower(user_cards, dense_dim, emb_dim=emb_dim)
    item = ItemTower(_cards(t, [f"item.{c}" for c in schema.items.categorical]), t.item_num.shape[1],
                     t.item_vec.shape[1], emb_dim=emb_dim)
    items = _ItemTables(t)
    pos = np.flatnonzero((data.labels > 0.5) & ~data.test)

    def pairs(b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        u_cat, u_dense = _user_batch(data, b, items, item, emb_dim)
        return user(u_cat, u_dense), items.embed(item, torch.from_numpy(data.items[b]))

    fit_two_tower(user, item, pos, pairs, epochs=epochs, batch=min(batch, max(16, pos.size // 4)), seed=seed,
                  temperature=temperature, min_steps=min_steps)
    return user.eval(), item.eval()


def embed_all_items(item_tower: ItemTower, tables: DataTables, chunk: int = 65_536) -> np.ndarray:
    """float32 [n_items, E]: every item's embedding (what serving keeps by item row)."""
    items = _ItemTables(tables)
    with torch.inference_mode():
        parts = [items.embed(item_tower, torch.arange(s, min(s + chunk, tables.n_items))).numpy()
                 for s in range(0, tables.n_items, chunk)]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def user_embeddings(user_tower: Any, data: TrainingData, req: np.ndarray, item_emb: np.ndarray) -> np.ndarray:
    """float32 [len(req), E]: the user tower on impressions ``req``'s users and contexts, fed as serving feeds it."""
    x = tower_inputs(data.tables, data.users[req], context_rows(data.context, req), item_emb)
    with torch.inference_mode():
        return np.asarray(user_tower(torch.from_numpy(x["user_cat"]), torch.from_numpy(x["user_dense"])).numpy())


def context_rows(context: ContextColumns, req: np.ndarray) -> ContextColumns:
    """The contexts of impressions ``req`` (sequences included), in that order."""
    return ContextColumns(cat=context.cat[req], num=context.num[req],
                          sequences=tuple(_take(offsets, rows, req) for offsets, rows in context.sequences))


def _take(offsets: np.ndarray, rows: np.ndarray, req: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = offsets[req + 1] - offsets[req]
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), rows[_flat_positions(offsets, req)]


def _flat_positions(offsets: np.ndarray, req: np.ndarray) -> np.ndarray:
    """Positions in a sequence's flat rows of the items of requests ``req``, request by request."""
    lengths = offsets[req + 1] - offsets[req]
    return np.repeat(offsets[req], lengths) + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths,
                                                                                    lengths)


def recall_at(user_tower: Any, data: TrainingData, item_emb: np.ndarray, n: int = RECALL_N,
              chunk: int | None = None) -> float:
    """Per holdout user, the share of their clicked holdout impressions whose item is in the top ``n``
    of all items for that impression's user and context (exact inner product); the mean over users.
    ``chunk`` impressions are scored at a time (default: about 64M scores, 256 MiB)."""
    clicked = np.flatnonzero(data.test & (data.labels > 0.5))
    if clicked.size == 0:
        return float("nan")
    chunk = chunk or max(1, (1 << 26) // item_emb.shape[0])
    n = min(n, item_emb.shape[0])
    hits = np.zeros(clicked.size, bool)
    for s in range(0, clicked.size, chunk):
        req = clicked[s:s + chunk]
        scores = user_embeddings(user_tower, data, req, item_emb) @ item_emb.T
        top = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n < item_emb.shape[0] else None
        hits[s:s + chunk] = True if top is None else (top == data.items[req, None]).any(axis=1)
    users, inverse = np.unique(data.users[clicked], return_inverse=True)
    per_user = np.bincount(inverse, weights=hits) / np.bincount(inverse)
    return float(per_user.mean()) if users.size else float("nan")


def ndcg_at(scores: np.ndarray, labels: np.ndarray, request: np.ndarray, k: int = NDCG_K) -> float:
    """Mean NDCG@k of ``scores`` over the requests of two impressions or more holding a click (gain: the label)."""
    order = np.lexsort((-scores, request))
    req, lab = request[order], labels[order]
    bounds = np.flatnonzero(np.diff(req)) + 1
    out = [ndcg_at_k(g, g, k) for g in np.split(lab, bounds) if g.size > 1 and g.any()]
    return float(np.mean(out)) if out else float("nan")


def pair_agreement(truth: np.ndarray, scores: np.ndarray, request: np.ndarray) -> float:
    """Share of the item pairs within a request (true probabilities differing) that ``scores`` orders
    as ``truth`` does (a tie in ``scores``: half)."""
    order = np.argsort(request, kind="stable")
    agree, pairs = 0.0, 0
    for group in np.split(order, np.flatnonzero(np.diff(request[order])) + 1):
        i, j = np.triu_indices(group.size, 1)
        dt, ds = truth[group][i] - truth[group][j], scores[group][i] - scores[group][j]
        keep = dt != 0
        agree += float((np.sign(dt[keep]) == np.sign(ds[keep])).sum() + 0.5 * (ds[keep] == 0).sum())
        pairs += int(keep.sum())
    return agree / pairs if pairs else float("nan")


def ranker_scores(ranker: Any, cat: np.ndarray, dense: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.asarray(ranker(torch.from_numpy(cat), torch.from_numpy(dense)).numpy().reshape(-1), np.float64)


def train_data_set(tables: DataTables, impressions: pa.Table, spec: FeatureSpec, *, epochs: int = 3,
                   seed: int = 0, towers: dict[str, Any] | None = None) -> TrainedDataSet:
    """Both models trained on the data set's impressions, and their holdout figures; ``towers``:
    :func:`train_towers`' hyper-parameters other than the seed (default: ``epochs`` and its defaults).

    Raises:
        FeaturesError: ``spec`` does not resolve against the data set.
        SchemaError: the holdout or the training split holds no click, or no non-click.
    """
    from serving.errors import SchemaError

    data = prepare(tables, impressions, seed=seed)
    for part, mask in (("training", ~data.test), ("holdout", data.test)):
        if len(np.unique(data.labels[mask])) < 2:
            raise SchemaError(f"the {part} impressions ({int(mask.sum()):,}) hold only label "
                              f"{int(data.labels[mask][0]) if mask.any() else '-'}: training needs clicks and non-clicks")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    ranker, plan, cat, dense = train_ranker(data, spec, epochs=epochs, seed=seed)
    t1 = time.perf_counter()
    user, item = train_towers(data, seed=seed, **(towers or {"epochs": epochs}))
    item_emb = embed_all_items(item, tables)
    t2 = time.perf_counter()
    test = np.flatnonzero(data.test)
    scores = ranker_scores(ranker, cat[test], dense[test])
    labels = data.labels[test]
    metrics = {"auc": round(auc(scores, labels), 4), **calibration(scores, labels),
               f"recall_at_{RECALL_N}": round(recall_at(user, data, item_emb), 4),
               f"ndcg_at_{NDCG_K}": round(ndcg_at(scores, labels, data.request[test]), 4),
               "holdout": "time" if _times(impressions) is not None else "random",
               "train_impressions": int((~data.test).sum()), "holdout_impressions": int(test.size),
               "train_ranker_s": round(t1 - t0, 1), "train_two_tower_s": round(t2 - t1, 1)}
    return TrainedDataSet(data, spec, plan, ranker, user, item, item_emb, cat, dense, metrics)
