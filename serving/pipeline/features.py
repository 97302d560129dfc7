"""Feature stage: in-memory user/item feature tables and the models' input assembly.

Owns: the table layout, the names of the models' tensors, and :func:`ranker_inputs`.
Must not touch: Triton, FAISS, files other than ``marketplace.npz``. The ranker's input tensors
(:class:`RankerInputs`, ``RANKER_INPUTS``) belong to ``serving.data.assembly``, the assembly a
ranker's feature declaration runs through; this module uses them.

Training and serving both build ranker inputs with :func:`ranker_inputs`, so the features a
model was trained on are exactly the features it is served.

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

from pathlib import Path

import numpy as np

from kernels import Crosser, CrossInputs, CrossSpec
from serving.data.assembly import RANKER_INPUTS, RankerInputs

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
    "ranker_inputs",
]

USER_CAT_FIELDS = ("region", "age_bucket", "device")
ITEM_CAT_FIELDS = ("category", "shop", "brand", "price_bucket")
ITEM_NUM_FIELDS = ("log_price", "rating", "log_popularity")

# Tensor names of the two models, in their positional order (config.pbtxt, export, serving).
RANKER_OUTPUT = "score"
TOWER_INPUTS = ("user_cat", "user_dense")
TOWER_OUTPUT = "embedding"


class FeatureTables:
    """User and item feature tables held in memory (the cold-start user is the last user row)."""

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
        self.n_users = int(user_cat.shape[0])
        self.n_items = int(item_cat.shape[0])
        cold_cat = np.zeros((1, user_cat.shape[1]), dtype=np.int64)
        cold_dense = np.zeros((1, user_dense.shape[1]), dtype=np.float32)
        self.user_cat = np.ascontiguousarray(np.vstack([user_cat.astype(np.int64), cold_cat]))
        self.user_dense = np.ascontiguousarray(np.vstack([user_dense.astype(np.float32), cold_dense]))
        self.item_cat = np.ascontiguousarray(item_cat, dtype=np.int64)
        self.item_num = np.ascontiguousarray(item_num, dtype=np.float32)
        self.item_dense = np.ascontiguousarray(item_dense, dtype=np.float32)
        for table in (self.user_cat, self.user_dense, self.item_cat, self.item_num, self.item_dense):
            # immutable: GPU crossing backends keep one device copy of each read-only table
            table.setflags(write=False)

    def with_items(self, item_cat: np.ndarray, item_num: np.ndarray, item_dense: np.ndarray) -> FeatureTables:
        """These user tables (shared, not copied) with other item tables (a catalogue change)."""
        out = object.__new__(FeatureTables)
        out.n_users, out.n_items = self.n_users, int(item_cat.shape[0])
        out.user_cat, out.user_dense = self.user_cat, self.user_dense
        out.item_cat = np.ascontiguousarray(item_cat, dtype=np.int64)
        out.item_num = np.ascontiguousarray(item_num, dtype=np.float32)
        out.item_dense = np.ascontiguousarray(item_dense, dtype=np.float32)
        if not (out.item_cat.shape[0] == out.item_num.shape[0] == out.item_dense.shape[0]):
            raise ValueError("item tables disagree on the number of rows")
        for table in (out.item_cat, out.item_num, out.item_dense):
            table.setflags(write=False)
        return out

    @classmethod
    def load(cls, path: str | Path) -> FeatureTables:
        with np.load(path) as z:
            return cls(z["user_cat"], z["user_dense"], z["item_cat"], z["item_num"], z["item_dense"])

    @property
    def cold_row(self) -> int:
        return self.n_users

    @property
    def dense_dim(self) -> int:
        return int(self.user_dense.shape[1])

    @property
    def popularity(self) -> np.ndarray:
        """Standardised log popularity of every item (``item_num``'s ``log_popularity`` column)."""
        return self.item_num[:, ITEM_NUM_FIELDS.index("log_popularity")]

    def tower_inputs(self, user_rows: np.ndarray) -> dict[str, np.ndarray]:
        """The user tower's inputs for ``user_rows``, by tensor name."""
        return dict(zip(TOWER_INPUTS, (self.user_cat[user_rows], self.user_dense[user_rows]), strict=True))

    def user_row(self, user_id: int) -> tuple[int, bool]:
        """Row of ``user_id`` and whether it took the cold-start path."""
        if 0 <= user_id < self.n_users:
            return user_id, False
        return self.cold_row, True

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
