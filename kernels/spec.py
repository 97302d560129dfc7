"""The feature-crossing contract shared by every backend.

For each (user, candidate) pair ``b`` with ``u = user_rows[b]`` and ``i = item_rows[b]``:

* hashed categorical crosses, one per configured field pair ``p = (uf, if)``::

      hashed[b, p] = cross_hash(user_cat[u, uf], item_cat[i, if], p) mod buckets

  with the 64-bit mixing hash below, bit-identical on every backend (ids may be negative:
  they are reinterpreted as uint64);

* dense interactions of the user and item dense vectors (same width ``D``)::

      dense[b, 0]     = sum_d user_dense[u, d] * item_dense[i, d]
      dense[b, 1 + d] = user_dense[u, d] * item_dense[i, d]

  float32, allclose across backends (summation order may differ).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "GOLDEN",
    "MIX1",
    "MIX2",
    "CrossInputs",
    "CrossOutput",
    "CrossSpec",
    "cross_hash_scalar",
]

# Constants of the 64-bit mixing hash (MurmurHash3 fmix64 and the golden-ratio increment).
MIX1 = 0xFF51AFD7ED558CCD
MIX2 = 0xC4CEB9FE1A85EC53
GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def _fmix64_int(x: int) -> int:
    x &= _MASK
    x ^= x >> 33
    x = (x * MIX1) & _MASK
    x ^= x >> 33
    x = (x * MIX2) & _MASK
    x ^= x >> 33
    return x


def cross_hash_scalar(a: int, b: int, pair: int, buckets: int) -> int:
    """Pure-Python definition of the cross hash (the spec the array backends must match).

    ``h = fmix64(uint64(a) ^ fmix64(uint64(b) + (pair + 1) * GOLDEN))``; result ``h mod buckets``.
    """
    inner = _fmix64_int((b & _MASK) + (((pair + 1) * GOLDEN) & _MASK))
    return _fmix64_int((a & _MASK) ^ inner) % buckets


@dataclass(frozen=True)
class CrossSpec:
    """Which fields are crossed and into how many buckets.

    Attributes:
        pairs: ``(user_field_index, item_field_index)`` per hashed cross, indexes into the
            columns of ``user_cat`` / ``item_cat``.
        buckets: hash buckets per cross (each cross has its own embedding table of this size).
        dense_dim: width ``D`` of the user and item dense vectors that are crossed.
    """

    pairs: tuple[tuple[int, int], ...]
    buckets: int
    dense_dim: int

    def __post_init__(self) -> None:
        if self.buckets < 1 or self.buckets > 2**31 - 1:
            raise ValueError(f"buckets must be an integer in [1, 2**31-1], got {self.buckets}")
        if self.dense_dim < 1:
            raise ValueError(f"dense_dim must be an integer >= 1, got {self.dense_dim}")
        if not self.pairs:
            raise ValueError("pairs must name at least one (user_field, item_field) cross")
        object.__setattr__(self, "pairs", tuple((int(a), int(b)) for a, b in self.pairs))

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def n_dense_out(self) -> int:
        return 1 + self.dense_dim

    def pairs_array(self) -> np.ndarray:
        return np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CrossSpec:
        d = json.loads(text)
        return cls(pairs=tuple(tuple(p) for p in d["pairs"]), buckets=int(d["buckets"]),
                   dense_dim=int(d["dense_dim"]))


class CrossInputs(NamedTuple):
    """Inputs of one crossing call (host or device arrays of one backend's kind).

    ``user_rows`` / ``item_rows``: int64 [B] row indexes into the tables.
    ``user_cat`` int64 [U, Fu], ``item_cat`` int64 [I, Fi], ``user_dense`` float32 [U, D],
    ``item_dense`` float32 [I, D].
    """

    user_rows: np.ndarray
    item_rows: np.ndarray
    user_cat: np.ndarray
    item_cat: np.ndarray
    user_dense: np.ndarray
    item_dense: np.ndarray


class CrossOutput(NamedTuple):
    """``hashed`` int64 [B, P]; ``dense`` float32 [B, 1 + D]."""

    hashed: np.ndarray
    dense: np.ndarray
