"""Small stand-ins for a data set's encoded tables (``serving.data.tables.DataTables``' attributes)
and its encoded request contexts, for the feature declaration and assembly tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.data.schema import Schema, parse_schema
from serving.data.tables import DataTables
from serving.pipeline.features import FeatureTables

# Every kind of column on every side; vectors of two widths; a popularity column that is no feature.
SCHEMA = parse_schema("""
items:
  id: sku
  categorical: [brand, category, store]
  numeric: [price, rating]
  vectors: {content: 8, look: 4}
  popularity: sales_7d
  groups: [store]
users:
  id: customer
  categorical: [region, tier]
  numeric: [age]
  vectors: {taste: 8, style: 4}
context:
  categorical: [device, channel]
  numeric: [hour]
  sequences: {recent: {max_len: 5}, cart: {max_len: 3}}
impressions: {user: customer, item: sku, label: clicked, time: ts}
""")

# The demo marketplace's tables under the names its feature declaration uses.
DEMO_SCHEMA = parse_schema("""
items:
  id: item_id
  categorical: [category, shop, brand, price_bucket]
  numeric: [log_price, rating, log_popularity]
  vectors: {content: 16}
users:
  id: user_id
  categorical: [region, age_bucket, device]
  vectors: {interest: 16}
impressions: {user: user_id, item: item_id, label: click}
""")


def fake_tables(schema: Schema, item_ids: np.ndarray, user_ids: np.ndarray, item_cat: np.ndarray,
                item_num: np.ndarray, item_vec: np.ndarray, user_cat: np.ndarray, user_num: np.ndarray,
                user_vec: np.ndarray, vocab: dict[str, dict[Any, int]]) -> DataTables:
    """Encoded tables as a data set's (user tables end with the cold row), popularity all zeros."""
    return DataTables(schema, item_ids, user_ids, item_cat, item_num, item_vec, user_cat, user_num, user_vec,
                      popularity=np.zeros(item_cat.shape[0], np.float32), vocab=vocab)


@dataclass(frozen=True)
class FakeContext:
    """An encoded request context: codes and values by field name, sequences as item rows."""

    cat: dict[str, int] = field(default_factory=dict)
    num: dict[str, float] = field(default_factory=dict)
    sequences: dict[str, np.ndarray] = field(default_factory=dict)


def _frozen(*arrays: np.ndarray) -> list[np.ndarray]:
    for a in arrays:
        a.setflags(write=False)
    return list(arrays)


def random_tables(seed: int, *, n_users: int = 30, n_items: int = 60, schema: Schema = SCHEMA) -> DataTables:
    """Random encoded tables: each categorical column's vocabulary ``v0, v1, ...`` of its own size."""
    rng = np.random.default_rng(seed)
    vocab = {name: {f"v{k}": k + 1 for k in range(int(rng.integers(2, 9)))}
             for name, (_, kind) in schema.name_index.items() if kind == "categorical"}

    def codes(side: str, columns: tuple[str, ...], rows: int) -> np.ndarray:
        cards = [len(vocab[f"{side}.{c}"]) + 1 for c in columns]
        return np.stack([rng.integers(0, c, rows) for c in cards] or [np.zeros((rows, 0))], axis=1) \
            .reshape(rows, len(columns)).astype(np.int64)

    def floats(rows: int, cols: int) -> np.ndarray:
        return rng.normal(size=(rows, cols)).astype(np.float32)

    users, items = schema.users, schema.items
    user_cat, user_num, user_vec = codes("user", users.categorical, n_users + 1), \
        floats(n_users + 1, len(users.numeric)), floats(n_users + 1, sum(users.vectors.values()))
    user_cat[-1], user_num[-1], user_vec[-1] = 0, 0, 0  # the cold-start user
    return fake_tables(schema, np.arange(100, 100 + n_items), np.array([f"u{k}" for k in range(n_users)]),
                          *_frozen(codes("item", items.categorical, n_items), floats(n_items, len(items.numeric)),
                                   floats(n_items, sum(items.vectors.values())), user_cat, user_num, user_vec),
                          vocab=vocab)


def random_contexts(tables: DataTables, n: int, seed: int) -> list[FakeContext]:
    """Contexts with some fields absent, unknown codes, empty and over-long sequences, unknown items."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cat = {f: int(rng.integers(0, 6)) for f in tables.schema.context.categorical if rng.random() < 0.8}
        num = {f: float(rng.normal()) for f in tables.schema.context.numeric if rng.random() < 0.8}
        seqs = {s: rng.integers(-1, tables.n_items, int(rng.integers(0, 9))) for s in tables.schema.context.sequences
                if rng.random() < 0.8}
        out.append(FakeContext(cat, num, seqs))
    return out


def demo_tables(tables: FeatureTables) -> DataTables:
    """Today's demo feature tables as a data set's (its categorical codes run from 1 to the largest)."""
    s = DEMO_SCHEMA
    vocab = {f"user.{c}": {k: k for k in range(1, int(tables.user_cat[:, j].max()) + 1)}
             for j, c in enumerate(s.users.categorical)}
    vocab |= {f"item.{c}": {k: k for k in range(1, int(tables.item_cat[:, j].max()) + 1)}
              for j, c in enumerate(s.items.categorical)}
    no_num = np.zeros((tables.user_cat.shape[0], 0), np.float32)
    return fake_tables(s, np.arange(tables.n_items), np.arange(tables.n_users), tables.item_cat, tables.item_num,
                          tables.item_dense, tables.user_cat, *_frozen(no_num), tables.user_dense, vocab)
