"""A small marketplace written as Parquet or CSV files, for the data set import's unit tests.

Items have string ids, users integer ids; the price and the users' age hold nulls (filled with
the median), the rating one (filled with the declared 0.5); the impressions name three rows of
unknown users and three of unknown items (one row both)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from serving.data.schema import Schema, parse_schema

SCHEMA = """\
items:
  id: sku
  categorical: [brand, category, store]
  numeric: [price, rating]
  vectors: {content: 4}
  popularity: sales_7d
  groups: [store, category]
  fill: {rating: 0.5}
users:
  id: customer
  categorical: [region, tier]
  numeric: [age]
context:
  categorical: [device]
  numeric: [hour]
  sequences: {recent: {of: items, max_len: 3}}
impressions:
  user: customer
  item: sku
  label: clicked
  time: ts
  context: {hour: hour_of_day}
"""

N_ITEMS, N_USERS = 10, 5
ITEMS: dict[str, list[Any]] = {
    "sku": [f"s{i}" for i in range(N_ITEMS)],
    "brand": ["b", "a", "c", "a", "b", None, "c", "c", "a", "b"],
    "category": [1, 2, 1, 3, 2, 1, 3, 3, 2, 1],
    "store": ["x", "y", "x", "y", "x", "x", "y", "y", "x", "x"],
    "price": [10.0, None, 30.0, 20.0, None, 50.0, 60.0, 70.0, 80.0, 90.0],  # median of the others: 55
    "rating": [4.0, 3.5, None, 5.0, 2.0, 4.5, 3.0, 1.0, 4.0, 2.5],  # declared fill: 0.5
    "content": [[i + j / 10 for j in range(4)] for i in range(N_ITEMS)],
    "sales_7d": [0, 5, 10, 3, 100, 7, 1, 0, 2, 40],
}
USERS: dict[str, list[Any]] = {
    "customer": [100, 101, 102, 103, 104],
    "region": ["n", "s", "n", "e", "s"],
    "tier": [1, 2, 1, None, 3],
    "age": [20.0, 30.0, None, 40.0, 50.0],  # median of the others: 35
}
IMPRESSIONS: dict[str, list[Any]] = {
    "customer": [100, 101, 102, 999, 103, 104, 100, 998, 101, 102, 997, 104],
    "sku": ["s0", "s1", "s2", "s3", "nope", "s5", "s6", "s7", "s8", "gone", "gone", "s4"],
    "clicked": [1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0],
    "ts": list(range(12)),
    "device": ["ios", "web", "ios", None, "android", "web", "ios", "web", "ios", "web", "web", "android"],
    "hour_of_day": [9.0, 12.0, None, 18.0, 20.0, 7.0, 9.0, 23.0, 12.0, 15.0, 16.0, 10.0],
    "recent": [["s1", "s2"], [], None, ["s9"], ["s1", "zz", "s2", "s3", "s4"], ["s0"], ["s3", "s3"], [], ["s2"],
               ["s1"], [], ["zz"]],
}
UNKNOWN_USERS, UNKNOWN_ITEMS = 3, 3  # rows 3, 7, 10 name unknown users; rows 4, 9, 10 unknown items
KEPT_ROWS = [0, 1, 2, 5, 6, 8, 11]


@dataclass(frozen=True)
class Files:
    schema: Path
    items: Path
    users: Path
    impressions: Path

    def args(self) -> list[str]:
        return ["--schema", str(self.schema), "--items", str(self.items), "--users", str(self.users),
                "--impressions", str(self.impressions)]


def schema(text: str = SCHEMA) -> Schema:
    return parse_schema(text)


def _as_text(values: list[Any]) -> list[Any]:
    """A list column as CSV text: ``"[0.1, 0.2]"`` (vectors) or ``"s1 s2"`` (sequences)."""
    return [None if v is None else (f"[{', '.join(map(str, v))}]" if v and not isinstance(v[0], str) else " ".join(v))
            for v in values]


def write(folder: Path, kind: str = "parquet", *, items: dict[str, list[Any]] | None = None,
          users: dict[str, list[Any]] | None = None, impressions: dict[str, list[Any]] | None = None,
          schema_text: str = SCHEMA) -> Files:
    """The three files (``kind``: parquet or csv) and the schema in ``folder``; a table given replaces the default."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = "parquet" if kind == "parquet" else "csv"
    out = []
    for name, columns in (("items", items or ITEMS), ("users", users or USERS),
                          ("impressions", impressions or IMPRESSIONS)):
        path = folder / f"{name}.{ext}"
        if kind == "parquet":
            pq.write_table(pa.table(columns), path)
        else:
            table = {k: _as_text(v) if any(isinstance(x, list) for x in v) else v for k, v in columns.items()}
            pacsv.write_csv(pa.table(table), path)
        out.append(path)
    (folder / "schema.yaml").write_text(schema_text)
    return Files(folder / "schema.yaml", *out)


def standardised(values: list[float | None], fill: float) -> np.ndarray:
    x = np.array([fill if v is None else v for v in values], np.float64)
    return ((x - x.mean()) / (x.std() or 1.0)).astype(np.float32)


@contextlib.contextmanager
def rankserve_env(data_dir: Path) -> Iterator[None]:
    """No ``RANKSERVE_*`` variable of the caller's but ``RANKSERVE_DATA_DIR=data_dir``, while it lasts."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("RANKSERVE_")]:
            mp.delenv(key)
        mp.setenv("RANKSERVE_DATA_DIR", str(data_dir))
        yield
