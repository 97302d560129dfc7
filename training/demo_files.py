"""The demo marketplace as a team's files: a schema and Parquet tables that ``rankserve data import``
takes, so the demo's data goes through the same path as any marketplace's.

Owns: the demo's schema (column names as ``serving/data/demo_features.yaml`` names them) and
writing the generated tables as ``schema.yaml``, ``items.parquet``, ``users.parquet`` and
``impressions.parquet``. The values are the generator's: categorical codes (1, 2, ...), the
standardised numerics, the observed vectors, popularity as ``log_popularity`` shifted to start at 0; impressions carry the click and, as ``ts``, their
order in the log with the generator's test share last (so the time-ordered holdout is the
generator's own test set, size for size). Must not touch: the data set store, models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.data import Marketplace

__all__ = ["DEMO_SCHEMA", "DemoFiles", "write_demo_files"]

DEMO_SCHEMA = """\
# The demo marketplace (training.data), declared as any marketplace's data is.
items:
  id: item_id
  categorical: [category, shop, brand, price_bucket]
  numeric: [log_price, rating, log_popularity]
  vectors: {{content: {dim}}}
  popularity: popularity     # log_popularity shifted to start at 0: the same order
  groups: [shop, category]
users:
  id: user_id
  categorical: [region, age_bucket, device]
  vectors: {{interest: {dim}}}
impressions:
  user: user_id
  item: item_id
  label: clicked
  time: ts
"""


@dataclass(frozen=True)
class DemoFiles:
    """Where :func:`write_demo_files` wrote the demo's data set files."""

    schema: Path
    items: Path
    users: Path
    impressions: Path


def _vectors(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, np.float32).reshape(-1)), x.shape[1])


def write_demo_files(mp: Marketplace, out: Path) -> DemoFiles:
    """Write ``mp`` into ``out`` as a schema and three Parquet files; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = DemoFiles(out / "schema.yaml", out / "items.parquet", out / "users.parquet", out / "impressions.parquet")
    files.schema.write_text(DEMO_SCHEMA.format(dim=mp.item_dense.shape[1]))
    n_items, n_users = mp.item_cat.shape[0], mp.user_cat.shape[0]
    items = {"item_id": pa.array(np.arange(n_items, dtype=np.int64))}
    items |= {name: pa.array(mp.item_cat[:, i]) for i, name in enumerate(("category", "shop", "brand", "price_bucket"))}
    items |= {name: pa.array(mp.item_num[:, i]) for i, name in enumerate(("log_price", "rating", "log_popularity"))}
    items["popularity"] = pa.array(mp.item_num[:, 2] - mp.item_num[:, 2].min())
    pq.write_table(pa.table(items | {"content": _vectors(mp.item_dense)}), files.items)
    users = {"user_id": pa.array(np.arange(n_users, dtype=np.int64))}
    users |= {name: pa.array(mp.user_cat[:, i]) for i, name in enumerate(("region", "age_bucket", "device"))}
    pq.write_table(pa.table(users | {"interest": _vectors(mp.user_dense)}), files.users)
    order = np.argsort(mp.imp_test, kind="stable")  # the generator's test share last: the latest by time
    pq.write_table(pa.table({"user_id": pa.array(mp.imp_user[order]), "item_id": pa.array(mp.imp_item[order]),
                             "clicked": pa.array(mp.imp_click[order].astype(np.int8)),
                             "ts": pa.array(np.arange(order.shape[0], dtype=np.int64))}), files.impressions)
    return files
