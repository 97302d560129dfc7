"""A second synthetic marketplace, written as the files of a data set import, with a known click model.

Owns: :func:`write_marketplace` (``schema.yaml``, ``items.parquet``, ``users.parquet`` and
``impressions.parquet``) and :func:`click_probability`, the true P(click) of a user, an item and a
request's context under the model the clicks were drawn from. Must not touch: the data set store
(``rankserve data import`` reads these files like any others), models, the demo marketplace
(``training.data``).

Unlike the demo it has string ids (``sku-000123``, ``cust-0042``), no vector column, two item
groups (``seller``, ``department``) and a request context: the ``device`` and the ``recent`` items
the user viewed. Each request shows ``PER_REQUEST`` random items to one user at one time. The
click logit of user ``u``, item ``i`` and context ``c`` is::

    logit = bias + A[u.tier, i.department] + B[u.region, i.seller] + C[c.device, i.department]
            + w_num * tenure_z(u) * price_z(i) + w_recent * share of c.recent in i.department
            + w_review * review_z(i)

with the tables ``A``, ``B``, ``C`` and the weights drawn from the seed alone, so the truth of any
(user, item, context) is recomputable from the written files and the seed. Item popularity
(``orders_30d``) is drawn apart from the click model: ordering by it is as good as chance. Recent
items come mostly from one department per request (the user's current intent), so the context
changes which items a user clicks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["PER_REQUEST", "SCHEMA_YAML", "ClickModel", "click_probability", "main", "write_marketplace"]

PER_REQUEST = 10  # items shown per request
SCHEMA_YAML = """\
items:
  id: sku
  categorical: [seller, department, color]
  numeric: [list_price, review_score]
  popularity: orders_30d
  groups: [seller, department]
users:
  id: customer
  categorical: [tier, region]
  numeric: [tenure_days]
context:
  categorical: [device]
  sequences: {recent: {of: items, max_len: 8}}
impressions:
  user: customer
  item: sku
  label: clicked
  time: shown_at
"""
TIERS = ("basic", "plus", "gold", "vip")
REGIONS = ("north", "south", "east", "west", "centre", "islands")
DEVICES = ("ios", "android", "web")
DEPARTMENTS = ("books", "garden", "kitchen", "toys", "sports", "beauty", "tools", "music", "pets", "office",
               "baby", "auto")
COLORS = ("red", "green", "blue", "black", "white", "grey", "pink")
_START = np.datetime64("2026-01-01T00:00:00", "s")


@dataclass(frozen=True)
class ClickModel:
    """The click model's tables and weights, drawn from a seed (see the module docstring)."""

    n_sellers: int
    tier_department: np.ndarray  # [tiers, departments]
    region_seller: np.ndarray  # [regions, sellers]
    device_department: np.ndarray  # [devices, departments]
    bias: float = -2.6
    w_num: float = 0.5
    w_recent: float = 1.6
    w_review: float = 0.25

    @classmethod
    def of(cls, seed: int, n_sellers: int) -> ClickModel:
        rng = np.random.default_rng([seed, 7])
        return cls(n_sellers, rng.normal(0, 1.0, (len(TIERS), len(DEPARTMENTS))),
                   rng.normal(0, 0.9, (len(REGIONS), n_sellers)), rng.normal(0, 0.7, (len(DEVICES), len(DEPARTMENTS))))

    def logit(self, tier: np.ndarray, region: np.ndarray, tenure_z: np.ndarray, seller: np.ndarray,
              department: np.ndarray, price_z: np.ndarray, review_z: np.ndarray, device: np.ndarray,
              recent_share: np.ndarray) -> np.ndarray:
        """The click logit of aligned arrays of codes (indexes into the module's tuples) and values."""
        return (self.bias + self.tier_department[tier, department] + self.region_seller[region, seller]
                + self.device_department[device, department] + self.w_num * tenure_z * price_z
                + self.w_recent * recent_share + self.w_review * review_z)


def _n_sellers(n_items: int) -> int:
    return max(8, n_items // 40)


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - np.nanmean(x)) / (np.nanstd(x) or 1.0)


def _codes(column: pa.ChunkedArray | pa.Array, values: Sequence[str]) -> np.ndarray:
    return pc.index_in(column, value_set=pa.array(values)).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass(frozen=True)
class _Items:
    seller: np.ndarray
    department: np.ndarray
    price_z: np.ndarray
    review_z: np.ndarray

    @classmethod
    def of(cls, items: pa.Table) -> _Items:
        sellers = [int(s.split("-")[1]) for s in items.column("seller").to_pylist()]
        price = np.log(items.column("list_price").to_numpy(zero_copy_only=False).astype(np.float64))
        review = items.column("review_score").to_numpy(zero_copy_only=False).astype(np.float64)
        review_z = np.nan_to_num(_zscore(review))  # a missing review counts as an average one
        return cls(np.asarray(sellers, np.int64), _codes(items.column("department"), DEPARTMENTS), _zscore(price),
                   review_z)


def click_probability(items: pa.Table, users: pa.Table, user_ids: Sequence[str], item_ids: Sequence[str],
                      devices: Sequence[str | None], recent: Sequence[Sequence[str]], *, seed: int) -> np.ndarray:
    """The true P(click) (float64 [n]) of ``user_ids[k]`` shown ``item_ids[k]`` on ``devices[k]``
    after viewing ``recent[k]``, under the click model of the marketplace :func:`write_marketplace`
    wrote with ``seed`` (``items``, ``users``: its ``items.parquet`` and ``users.parquet``). An
    unknown device counts as the first; unknown recent ids are left out."""
    it = _Items.of(items)
    model = ClickModel.of(seed, _n_sellers(items.num_rows))
    item_row = {v: k for k, v in enumerate(items.column("sku").to_pylist())}
    user_row = {v: k for k, v in enumerate(users.column("customer").to_pylist())}
    i = np.array([item_row[v] for v in item_ids], np.int64)
    u = np.array([user_row[v] for v in user_ids], np.int64)
    tenure_z = _zscore(np.log1p(users.column("tenure_days").to_numpy(zero_copy_only=False).astype(np.float64)))
    share = np.array([_share(it.department, [item_row[r] for r in rec if r in item_row], it.department[k])
                      for rec, k in zip(recent, i, strict=True)])
    device = np.maximum(_codes(pa.array(list(devices), pa.string()), DEVICES), 0)
    logit = model.logit(_codes(users.column("tier"), TIERS)[u], _codes(users.column("region"), REGIONS)[u],
                        tenure_z[u], it.seller[i], it.department[i], it.price_z[i], it.review_z[i], device, share)
    return 1.0 / (1.0 + np.exp(-logit))


def _share(departments: np.ndarray, rows: list[int], department: int) -> float:
    return float(np.mean(departments[rows] == department)) if rows else 0.0


def _items(rng: np.random.Generator, n_items: int) -> pa.Table:
    review = np.round(rng.uniform(1.0, 5.0, n_items), 1)
    review_arr = pa.array(review, mask=rng.random(n_items) < 0.03)  # a few unreviewed items (nulls)
    return pa.table({
        "sku": [f"sku-{k:06d}" for k in range(n_items)],
        "seller": [f"seller-{k:03d}" for k in rng.integers(0, _n_sellers(n_items), n_items)],
        "department": np.array(DEPARTMENTS)[rng.integers(0, len(DEPARTMENTS), n_items)].tolist(),
        "color": np.array(COLORS)[rng.integers(0, len(COLORS), n_items)].tolist(),
        "list_price": np.round(np.exp(rng.normal(3.2, 0.8, n_items)), 2),
        "review_score": review_arr,
        "orders_30d": rng.poisson(np.exp(rng.normal(2.0, 1.0, n_items))).astype(np.int64),
    })


def _users(rng: np.random.Generator, n_users: int) -> pa.Table:
    return pa.table({
        "customer": [f"cust-{k:04d}" for k in range(n_users)],
        "tier": np.array(TIERS)[rng.choice(len(TIERS), n_users, p=[0.5, 0.25, 0.15, 0.1])].tolist(),
        "region": np.array(REGIONS)[rng.integers(0, len(REGIONS), n_users)].tolist(),
        "tenure_days": rng.integers(1, 3000, n_users).astype(np.int64),
    })


def _recent(rng: np.random.Generator, departments: np.ndarray, n_requests: int, max_len: int) -> pa.ListArray:
    """Each request's recently viewed items: 0..max_len of them, most from one department (the intent)."""
    lengths = rng.integers(0, max_len + 1, n_requests)
    intent = rng.integers(0, len(DEPARTMENTS), n_requests)
    by_department = [np.flatnonzero(departments == d) for d in range(len(DEPARTMENTS))]
    seg = np.repeat(np.arange(n_requests), lengths)
    on_intent = rng.random(seg.size) < 0.7
    picks = rng.integers(0, departments.size, seg.size)
    for d, pool in enumerate(by_department):
        hit = on_intent & (intent[seg] == d)
        if pool.size and hit.any():
            picks[hit] = pool[rng.integers(0, pool.size, int(hit.sum()))]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array([f"sku-{k:06d}" for k in picks], pa.string()))


def write_marketplace(out_dir: Path, *, n_items: int = 3000, n_users: int = 1500, n_impressions: int = 150_000,
                      seed: int = 0) -> dict[str, Path]:
    """Write the marketplace's four files into ``out_dir``; returns their paths by role (``schema``,
    ``items``, ``users``, ``impressions``)."""
    if n_items < 20 or n_users < 5 or n_impressions < PER_REQUEST:
        raise ValueError(f"need at least 20 items, 5 users and {PER_REQUEST} impressions")
    rng = np.random.default_rng(seed)
    items, users = _items(rng, n_items), _users(rng, n_users)
    n_req = n_impressions // PER_REQUEST
    req_user = rng.integers(0, n_users, n_req)
    req_device = np.array(DEVICES)[rng.choice(len(DEVICES), n_req, p=[0.4, 0.35, 0.25])]
    recent = _recent(rng, _Items.of(items).department, n_req, 8)
    shown = np.stack([rng.choice(n_items, PER_REQUEST, replace=False) for _ in range(n_req)]).reshape(-1)
    req = np.repeat(np.arange(n_req), PER_REQUEST)
    user_ids = np.array(users.column("customer").to_pylist(), dtype=object)[req_user[req]]
    item_ids = np.array(items.column("sku").to_pylist(), dtype=object)[shown]
    recent_lists = recent.to_pylist()
    prob = click_probability(items, users, user_ids.tolist(), item_ids.tolist(), req_device[req].tolist(),
                             [recent_lists[r] for r in req], seed=seed)
    shown_at = _START + np.sort(rng.integers(0, 90 * 86_400, n_req)).astype("timedelta64[s]")
    impressions = pa.table({"customer": user_ids.tolist(), "sku": item_ids.tolist(),
                            "clicked": (rng.random(prob.size) < prob).astype(np.int8),
                            "shown_at": pa.array(shown_at[req], pa.timestamp("s")),
                            "device": req_device[req].tolist(), "recent": recent.take(pa.array(req))})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"schema": out / "schema.yaml", "items": out / "items.parquet", "users": out / "users.parquet",
             "impressions": out / "impressions.parquet"}
    paths["schema"].write_text(SCHEMA_YAML)
    for role, table in (("items", items), ("users", users), ("impressions", impressions)):
        pq.write_table(table, paths[role])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.synthetic OUT [--items N --users N --impressions N --seed S]``: write the
    marketplace's files into ``OUT`` (example files to try ``rankserve data import`` with)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.synthetic", description=main.__doc__)
    parser.add_argument("out", type=Path, help="folder to write schema.yaml and the three Parquet files into")
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--impressions", type=int, default=150_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        paths = write_marketplace(args.out, n_items=args.items, n_users=args.users, n_impressions=args.impressions,
                                  seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    print("\n".join(f"{role}: {path}" for role, path in paths.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
