"""Feature stage: the demo's built tables as a data set's (:class:`FeatureTables`, a ``DataTables``),
the models' tensor names, and the demo's crossing layout.

Owns: the demo's table layout and schema (:func:`demo_schema`), the names of the models' output
tensors, :func:`ranker_inputs` (the demo trainer's assembly) and :func:`cross_spec_plan` (the
same layout as a feature plan, what a demo ranker version is served with). Must not touch: Triton, FAISS, files other than ``marketplace.npz``. The ranker's input tensors
(:class:`RankerInputs`, ``RANKER_INPUTS``) belong to ``serving.data.assembly``, the assembly a
ranker's feature declaration runs through; this module uses them.

The demo trainer builds ranker inputs with :func:`ranker_inputs`; serving assembles the same
inputs through the version's feature plan (``serving.pipeline.crossing``), one kernel launch, so
the features a model was trained on are exactly the features it is served.

Table layout (``marketplace.npz``, written by ``training.data``):

* ``user_cat``   int64  [U, 3]  region, age_bucket, device (0 means unknown)
* ``user_dense`` float32[U, D]  observed interest vector
* ``item_cat``   int64  [I, 4]  category, shop, brand, price_bucket
* ``item_num``   float32[I, 3]  standardised log price, rating, log popularity
* ``item_dense`` float32[I, D]  observed content vector

Users and items are identified by their row index (``user_id`` in ``[0, U)``, ``item_id`` in
``[0, I)``). The user tables get one extra row at index ``U``: the cold-start user (unknown
categories, zero interest vector), used for ``user_id`` values the store does not know.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from kernels import Crosser, CrossInputs, CrossSpec
from kernels.spec import (
    DENSE_DOT,
    DENSE_PROD,
    SIDE_ITEM,
    SIDE_Q,
    FeaturePlan,
    cat_column,
    cat_cross,
    dense_column,
    dense_vectors,
)
from serving.data.assembly import RANKER_INPUTS, ContextColumns, RankerInputs
from serving.data.schema import EntitySpec, ImpressionSpec, ItemSpec, Schema
from serving.data.tables import NO_CONTEXT, DataTables
from serving.data.tower import TOWER_INPUTS, tower_inputs

__all__ = [
    "ITEM_CAT_FIELDS",
    "ITEM_NUM_FIELDS",
    "RANKER_INPUTS",
    "RANKER_OUTPUT",
    "TOWER_INPUTS",
    "TOWER_OUTPUT",
    "USER_CAT_FIELDS",
    "FeatureTables",
    "RankerInputs",
    "cross_spec_plan",
    "demo_schema",
    "ranker_inputs",
]

USER_CAT_FIELDS = ("region", "age_bucket", "device")
ITEM_CAT_FIELDS = ("category", "shop", "brand", "price_bucket")
ITEM_NUM_FIELDS = ("log_price", "rating", "log_popularity")

# Tensor names of the two models, in their positional order (config.pbtxt, export, serving).
RANKER_OUTPUT = "score"
TOWER_OUTPUT = "embedding"


@cache
def demo_schema(dim: int) -> Schema:
    """The demo marketplace's built tables (``marketplace.npz``) as a data set's schema: the
    names its feature declaration (``serving/data/demo_features.yaml``) uses, ``dim`` wide
    vectors, shop and category its groups."""
    return Schema(items=ItemSpec(id="item_id", categorical=ITEM_CAT_FIELDS, numeric=ITEM_NUM_FIELDS,
                                 vectors={"content": dim}, popularity=None, groups=("shop", "category")),
                  users=EntitySpec(id="user_id", categorical=USER_CAT_FIELDS, vectors={"interest": dim}),
                  impressions=ImpressionSpec(user="user_id", item="item_id", label="clicked", time=None))


def _code_vocab(schema_side: str, columns: tuple[str, ...], table: np.ndarray) -> dict[str, dict[object, int]]:
    """Codes that are their own values, 1 to the largest held (a declaration's cardinalities)."""
    return {f"{schema_side}.{c}": {k: k for k in range(1, int(table[:, j].max(initial=0)) + 1)}
            for j, c in enumerate(columns)}


class FeatureTables(DataTables):
    """The demo's built tables as a :class:`DataTables` (the cold-start user is the last user
    row): integer ids that are the rows, the schema :func:`demo_schema`, popularity the
    standardised log popularity (``item_num``'s ``log_popularity`` column). It keeps the demo's
    names for the vector tables (``user_dense``, ``item_dense``)."""

    def __init__(
        self,
        user_cat: np.ndarray,
        user_dense: np.ndarray,
        item_cat: np.ndarray,
        item_num: np.ndarray,
        item_dense: np.ndarray,
    ) -> None:
        if user_cat.shape[0] != user_dense.shape[0]:
            raise ValueError(f"user tables disagree: {user_cat.shape[0]} vs {user_dense.shape[0]} rows")
        if not (item_cat.shape[0] == item_num.shape[0] == item_dense.shape[0]):
            raise ValueError("item tables disagree on the number of rows")
        if user_dense.shape[1] != item_dense.shape[1]:
            raise ValueError(f"dense widths differ: user {user_dense.shape[1]}, item {item_dense.shape[1]}")
        schema = demo_schema(int(user_dense.shape[1]))
        users = int(user_cat.shape[0])
        cold_cat = np.zeros((1, user_cat.shape[1]), dtype=np.int64)
        cold_dense = np.zeros((1, user_dense.shape[1]), dtype=np.float32)
        u_cat = np.ascontiguousarray(np.vstack([user_cat.astype(np.int64), cold_cat]))
        item_cat = np.ascontiguousarray(item_cat, dtype=np.int64)
        item_num = np.ascontiguousarray(item_num, dtype=np.float32)
        vocab = _code_vocab("user", schema.users.categorical, u_cat) | _code_vocab("item", schema.items.categorical,
                                                                                   item_cat)
        super().__init__(schema=schema, item_ids=np.arange(item_cat.shape[0], dtype=np.int64),
                         user_ids=np.arange(users, dtype=np.int64), item_cat=item_cat, item_num=item_num,
                         item_vec=np.ascontiguousarray(item_dense, dtype=np.float32), user_cat=u_cat,
                         user_num=np.zeros((users + 1, 0), np.float32),
                         user_vec=np.ascontiguousarray(np.vstack([user_dense.astype(np.float32), cold_dense])),
                         popularity=item_num[:, ITEM_NUM_FIELDS.index("log_popularity")], vocab=vocab)

    def with_items(self, item_cat: np.ndarray, item_num: np.ndarray, item_dense: np.ndarray, *,
                   item_groups: np.ndarray | None = None) -> FeatureTables:
        """These user tables (shared, not copied) with other item tables (a catalogue change);
        ``item_groups``: shop and category (default: from ``item_cat``)."""
        if not (item_cat.shape[0] == item_num.shape[0] == item_dense.shape[0]):
            raise ValueError("item tables disagree on the number of rows")
        item_num = np.ascontiguousarray(item_num, dtype=np.float32)
        return self.with_item_tables(np.arange(item_cat.shape[0], dtype=np.int64),
                                     np.ascontiguousarray(item_cat, dtype=np.int64), item_num,
                                     np.ascontiguousarray(item_dense, dtype=np.float32),
                                     item_num[:, ITEM_NUM_FIELDS.index("log_popularity")], item_groups=item_groups)

    @classmethod
    def load(cls, path: str | Path) -> FeatureTables:
        with np.load(path) as z:
            return cls(z["user_cat"], z["user_dense"], z["item_cat"], z["item_num"], z["item_dense"])

    @property
    def user_dense(self) -> np.ndarray:
        return self.user_vec

    @property
    def item_dense(self) -> np.ndarray:
        return self.item_vec

    @property
    def dense_dim(self) -> int:
        return int(self.user_vec.shape[1])

    def tower_inputs(self, user_rows: np.ndarray) -> dict[str, np.ndarray]:
        """The user tower's inputs for ``user_rows`` without a context, by tensor name."""
        rows = np.asarray(user_rows, dtype=np.int64).reshape(-1)
        return tower_inputs(self, rows, ContextColumns.of_contexts(self.schema, [NO_CONTEXT] * rows.shape[0]), None)

    def unknown_items(self, item_ids: np.ndarray) -> np.ndarray:
        """The ids in ``item_ids`` that are not in the catalogue."""
        ids = np.asarray(item_ids, dtype=np.int64)
        return ids[(ids < 0) | (ids >= self.n_items)]


def ranker_inputs(
    tables: FeatureTables,
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    crosser: Crosser,
    spec: CrossSpec,
) -> RankerInputs:
    """Assemble ranker inputs for pairs ``(user_rows[b], item_rows[b])`` with one crossing call:
    ``cat`` = user categorical fields, item categorical fields, hashed crosses; ``dense`` = item
    numeric fields, then the dense interactions (dot, element-wise products)."""
    user_rows = np.ascontiguousarray(user_rows, dtype=np.int64)
    item_rows = np.ascontiguousarray(item_rows, dtype=np.int64)
    crossed = crosser.cross(
        CrossInputs(user_rows, item_rows, tables.user_cat, tables.item_cat, tables.user_dense, tables.item_dense),
        spec,
    )
    cat = np.concatenate([tables.user_cat[user_rows], tables.item_cat[item_rows], crossed.hashed], axis=1)
    dense = np.concatenate([tables.item_num[item_rows], crossed.dense], axis=1)
    return RankerInputs(cat=np.ascontiguousarray(cat), dense=np.ascontiguousarray(dense, dtype=np.float32))


def cross_spec_plan(tables: DataTables, spec: CrossSpec) -> FeaturePlan:
    """The plan of :func:`ranker_inputs`'s layout over ``tables`` (the demo's columns): the user's
    and the item's categoricals, the crosses of ``spec`` (salt = pair index), the item's numerics,
    then dot and element-wise product of the first ``spec.dense_dim`` vector columns. With the
    demo ranker's spec it is the plan of ``serving/data/demo_features.yaml``."""
    n_user, n_item = tables.user_cat.shape[1], tables.item_cat.shape[1]
    cat = [cat_column(SIDE_Q, j) for j in range(n_user)] + [cat_column(SIDE_ITEM, j) for j in range(n_item)]
    cat += [cat_cross((SIDE_Q, u), (SIDE_ITEM, i), spec.buckets, p) for p, (u, i) in enumerate(spec.pairs)]
    dense = [dense_column(SIDE_ITEM, j) for j in range(tables.item_num.shape[1])]
    dense += [dense_vectors(DENSE_DOT, 0, 0, spec.dense_dim), dense_vectors(DENSE_PROD, 0, 0, spec.dense_dim)]
    cards = [int(t[:, j].max(initial=0)) + 1 for t in (tables.user_cat[:-1], tables.item_cat)
             for j in range(t.shape[1])]
    return FeaturePlan.of(cat, dense, cards + [spec.buckets] * spec.n_pairs)
