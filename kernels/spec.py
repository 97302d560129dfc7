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

That contract is one case of the general one, :class:`FeaturePlan`: a batch of ``B`` rows, row
``b`` pairing request ``q = req_of[b]`` with item ``i = item_rows[b]``, and a plan of operations
that each write output columns:

* categorical outputs (``cat`` int64 [B, C]), one per row of ``cat_ops``: a request column
  ``q_cat[q, c]``, an item column ``item_cat[i, c]``, or a cross of two such references
  ``cross_hash(a, b, salt) mod buckets``;
* dense outputs (``dense`` float32 [B, D]), from the rows of ``dense_ops``: a request or item
  numeric column, ``dot(q_vec[q, s:s+w], item_vec[i, t:t+w])`` (one output) or their element-wise
  product (``w`` outputs).

Every backend implements ``assemble(inputs, plan) -> (cat, dense)`` in one fused pass over the
rows; the crossing contract above runs through it (:func:`plan_of_cross_spec`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CAT_COPY",
    "CAT_CROSS",
    "DENSE_DOT",
    "DENSE_NUM",
    "DENSE_PROD",
    "GOLDEN",
    "MIX1",
    "MIX2",
    "SIDE_ITEM",
    "SIDE_Q",
    "AssembleFn",
    "CatOp",
    "CrossInputs",
    "CrossOutput",
    "CrossSpec",
    "DenseOp",
    "FeatureInputs",
    "FeatureOutput",
    "FeaturePlan",
    "cat_column",
    "cat_cross",
    "cross_hash_scalar",
    "cross_with",
    "dense_column",
    "dense_vectors",
    "plan_of_cross_spec",
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


# What a categorical output is (column 0 of a row of ``FeaturePlan.cat_ops``) and which table a
# column reference reads: the request's (``q_cat``) or the candidate item's (``item_cat``).
CAT_COPY, CAT_CROSS = 0, 1
SIDE_Q, SIDE_ITEM = 0, 1
# What a dense operation is (column 0 of a row of ``FeaturePlan.dense_ops``).
DENSE_NUM, DENSE_DOT, DENSE_PROD = 0, 1, 2

# A categorical output (a row of cat_ops) and a dense operation before its output column is placed.
CatOp = tuple[int, int, int, int, int, int, int]
DenseOp = tuple[int, int, int, int, int]

_CAT_COLUMNS = ("kind", "a_side", "a_col", "b_side", "b_col", "buckets", "salt")
_DENSE_COLUMNS = ("kind", "side", "a", "b", "width", "out")
_MEAN_COLUMNS = ("sequence", "offset", "width")
_MAX_BUCKETS = 2**31 - 1


def cat_column(side: int, col: int) -> CatOp:
    """Categorical output: column ``col`` of the request's (``SIDE_Q``) or the item's table."""
    return (CAT_COPY, side, col, SIDE_Q, 0, 0, 0)


def cat_cross(a: tuple[int, int], b: tuple[int, int], buckets: int, salt: int) -> CatOp:
    """Categorical output: ``cross_hash(a, b, salt) mod buckets`` of two ``(side, col)`` references."""
    return (CAT_CROSS, a[0], a[1], b[0], b[1], buckets, salt)


def dense_column(side: int, col: int) -> DenseOp:
    """One dense output: numeric column ``col`` of the request's (``SIDE_Q``) or the item's table."""
    return (DENSE_NUM, side, col, 0, 1)


def dense_vectors(kind: int, q_offset: int, item_offset: int, width: int) -> DenseOp:
    """``DENSE_DOT`` (one output) or ``DENSE_PROD`` (``width`` outputs) of ``q_vec[q_offset:+width]``
    and ``item_vec[item_offset:+width]``."""
    return (kind, SIDE_Q, q_offset, item_offset, width)


def _table(rows: Any, columns: tuple[str, ...], what: str) -> np.ndarray:
    a = np.array(rows, dtype=np.int64)
    if a.size == 0 or (a.ndim == 1 and len(columns) == 1):
        a = a.reshape(-1, len(columns))
    if a.ndim != 2 or a.shape[1] != len(columns):
        raise ValueError(f"{what}: one row of {len(columns)} {columns} per entry, got shape {a.shape}")
    if (a < 0).any():
        raise ValueError(f"{what}: entries must be >= 0, got {a.tolist()}")
    a.setflags(write=False)  # read-only: the GPU backends keep one device copy of it
    return a


@dataclass(frozen=True, eq=False)
class FeaturePlan:
    """The operations that turn a batch's tables into the ranker's ``cat`` and ``dense`` inputs.

    Attributes:
        cat_ops: int64 [C, 7], one row per categorical output: ``(kind, a_side, a_col, b_side,
            b_col, buckets, salt)``; ``CAT_COPY`` copies column ``a_col`` of side ``a_side``
            (``SIDE_Q``: ``q_cat``, ``SIDE_ITEM``: ``item_cat``), ``CAT_CROSS`` hashes it with
            reference ``b`` into ``buckets`` with ``salt`` (the cross hash's pair argument).
        dense_ops: int64 [K, 6], ``(kind, side, a, b, width, out)``: ``DENSE_NUM`` writes numeric
            column ``a`` of side ``side`` (``q_num`` or ``item_num``) to output column ``out``;
            ``DENSE_DOT`` the dot of ``q_vec[q, a:a+width]`` and ``item_vec[i, b:b+width]`` to
            ``out``; ``DENSE_PROD`` their element-wise product to ``out:out+width``. Outputs are
            written in order, without gaps.
        cardinalities: int64 [C], ids each categorical output can take (what a model's
            embedding table needs): a column's vocabulary size + 1, a cross's buckets.
        means: int64 [M, 3], ``(sequence, offset, width)``: how the request side fills ``q_vec``
            after its own vectors, one block per row: the mean of ``item_vec[:, offset:offset+width]``
            over the items of request sequence ``sequence``. The kernels do not read it.
    """

    cat_ops: np.ndarray
    dense_ops: np.ndarray
    cardinalities: np.ndarray
    means: np.ndarray

    def __post_init__(self) -> None:
        cat = _table(self.cat_ops, _CAT_COLUMNS, "cat_ops")
        dense = _table(self.dense_ops, _DENSE_COLUMNS, "dense_ops")
        cards = _table(self.cardinalities, ("cardinality",), "cardinalities").reshape(-1)
        means = _table(self.means, _MEAN_COLUMNS, "means")
        for name, value in (("cat_ops", cat), ("dense_ops", dense), ("cardinalities", cards), ("means", means)):
            object.__setattr__(self, name, value)
        _check_cat_ops(cat, cards)
        _check_dense_ops(dense)
        if (means[:, 2] < 1).any():
            raise ValueError(f"means: every width must be >= 1, got {means.tolist()}")

    @classmethod
    def of(cls, cat_ops: Sequence[CatOp], dense_ops: Sequence[DenseOp], cardinalities: Sequence[int],
           means: Sequence[tuple[int, int, int]] = ()) -> FeaturePlan:
        """A plan from operations (:func:`cat_column`, :func:`cat_cross`, :func:`dense_column`,
        :func:`dense_vectors`); the dense outputs follow each other in order."""
        rows, out = [], 0
        for kind, side, a, b, width in dense_ops:
            rows.append((kind, side, a, b, width, out))
            out += width if kind == DENSE_PROD else 1
        return cls(np.array(cat_ops, np.int64), np.array(rows, np.int64), np.array(cardinalities, np.int64),
                   np.array(means, np.int64))

    @property
    def n_cat(self) -> int:
        return int(self.cat_ops.shape[0])

    @functools.cached_property
    def n_dense(self) -> int:
        if not self.dense_ops.shape[0]:
            return 0
        last = self.dense_ops[-1]
        return int(last[5] + (last[4] if last[0] == DENSE_PROD else 1))

    def widths(self) -> dict[str, int]:
        """The columns each input table must have at least (its widest reference + 1)."""
        need = dict.fromkeys(("q_cat", "item_cat", "q_num", "item_num", "q_vec", "item_vec"), 0)
        for kind, a_side, a_col, b_side, b_col, _, _ in self.cat_ops.tolist():
            for side, col in ((a_side, a_col), (b_side, b_col))[:1 + (kind == CAT_CROSS)]:
                key = "q_cat" if side == SIDE_Q else "item_cat"
                need[key] = max(need[key], col + 1)
        for kind, side, a, b, width, _ in self.dense_ops.tolist():
            if kind == DENSE_NUM:
                key = "q_num" if side == SIDE_Q else "item_num"
                need[key] = max(need[key], a + 1)
            else:
                need["q_vec"] = max(need["q_vec"], a + width)
                need["item_vec"] = max(need["item_vec"], b + width)
        return need

    def check(self, inputs: FeatureInputs) -> None:
        """Raise ValueError when ``inputs`` (host or device arrays) cannot hold what this plan reads."""
        if inputs.req_of.shape[0] != inputs.item_rows.shape[0]:
            raise ValueError(f"req_of has {inputs.req_of.shape[0]} rows, item_rows {inputs.item_rows.shape[0]}")
        for field, need in self._needs:  # once per batch: a few comparisons
            if inputs[field].shape[1] < need:
                raise ValueError(f"{FeatureInputs._fields[field]} has {inputs[field].shape[1]} columns; the plan "
                                 f"reads {need}")

    @functools.cached_property
    def _needs(self) -> tuple[tuple[int, int], ...]:
        """(FeatureInputs field index, columns needed) of each table the plan reads."""
        return tuple((FeatureInputs._fields.index(name), need) for name, need in self.widths().items() if need)

    def to_dict(self) -> dict[str, list[Any]]:
        return {"cat_ops": self.cat_ops.tolist(), "dense_ops": self.dense_ops.tolist(),
                "cardinalities": self.cardinalities.tolist(), "means": self.means.tolist()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeaturePlan:
        unknown = sorted(set(d) - {"cat_ops", "dense_ops", "cardinalities", "means"})
        if unknown:
            raise ValueError(f"unknown plan keys {unknown}")
        return cls(np.array(d["cat_ops"], np.int64), np.array(d["dense_ops"], np.int64),
                   np.array(d["cardinalities"], np.int64), np.array(d.get("means", []), np.int64))

    @classmethod
    def from_json(cls, text: str) -> FeaturePlan:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeaturePlan) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())


def _check_cat_ops(cat: np.ndarray, cards: np.ndarray) -> None:
    if cards.shape[0] != cat.shape[0]:
        raise ValueError(f"cardinalities: one per cat op ({cat.shape[0]}), got {cards.shape[0]}")
    if (cards < 1).any():
        raise ValueError(f"cardinalities must be >= 1, got {cards.tolist()}")
    for j, (kind, a_side, _, b_side, _, buckets, _) in enumerate(cat.tolist()):
        if kind not in (CAT_COPY, CAT_CROSS) or a_side not in (SIDE_Q, SIDE_ITEM) or b_side not in (SIDE_Q, SIDE_ITEM):
            raise ValueError(f"cat_ops[{j}]: unknown kind or side in {cat[j].tolist()}")
        if kind == CAT_CROSS and not 1 <= buckets <= _MAX_BUCKETS:
            raise ValueError(f"cat_ops[{j}]: buckets must be an integer in [1, 2**31-1], got {buckets}")


def _check_dense_ops(dense: np.ndarray) -> None:
    out = 0
    for k, (kind, side, _, _, width, first) in enumerate(dense.tolist()):
        if kind not in (DENSE_NUM, DENSE_DOT, DENSE_PROD) or side not in (SIDE_Q, SIDE_ITEM):
            raise ValueError(f"dense_ops[{k}]: unknown kind or side in {dense[k].tolist()}")
        if width < 1 or (kind == DENSE_NUM and width != 1):
            raise ValueError(f"dense_ops[{k}]: width must be >= 1 (1 for a numeric column), got {width}")
        if first != out:
            raise ValueError(f"dense_ops[{k}]: writes from column {first}, expected {out} (in order, no gaps)")
        out += width if kind == DENSE_PROD else 1


class FeatureInputs(NamedTuple):
    """Inputs of one assembly call (host or device arrays of one backend's kind).

    ``req_of`` / ``item_rows``: int64 [B], each row's request (a row of the ``q_*`` tables) and
    item. Request side: ``q_cat`` int64 [Q, Cq], ``q_num`` float32 [Q, Nq], ``q_vec`` float32
    [Q, Vq]. Item side: ``item_cat`` int64 [I, Ci], ``item_num`` float32 [I, Ni], ``item_vec``
    float32 [I, Vi].
    """

    req_of: np.ndarray
    item_rows: np.ndarray
    q_cat: np.ndarray
    q_num: np.ndarray
    q_vec: np.ndarray
    item_cat: np.ndarray
    item_num: np.ndarray
    item_vec: np.ndarray

    @classmethod
    def of_cross(cls, x: CrossInputs) -> FeatureInputs:
        """The crossing contract's inputs as a plan's: the user tables are the request side."""
        return cls(x.user_rows, x.item_rows, x.user_cat, _NO_COLUMNS, x.user_dense, x.item_cat, _NO_COLUMNS,
                   x.item_dense)


class FeatureOutput(NamedTuple):
    """``cat`` int64 [B, C]; ``dense`` float32 [B, D] (host or device arrays)."""

    cat: Any
    dense: Any


AssembleFn = Callable[[FeatureInputs, FeaturePlan], FeatureOutput]

# a numeric table without columns (the crossing contract has none); read-only like a feature table
_NO_COLUMNS = np.zeros((1, 0), dtype=np.float32)
_NO_COLUMNS.setflags(write=False)


@functools.lru_cache(maxsize=64)
def plan_of_cross_spec(spec: CrossSpec) -> FeaturePlan:
    """The crossing contract as a plan: the crosses (salt = pair index), then dot and products.
    One plan per spec (cached), so GPU backends keep its tables on the device."""
    cat = [cat_cross((SIDE_Q, u), (SIDE_ITEM, i), spec.buckets, p) for p, (u, i) in enumerate(spec.pairs)]
    dense = [dense_vectors(DENSE_DOT, 0, 0, spec.dense_dim), dense_vectors(DENSE_PROD, 0, 0, spec.dense_dim)]
    return FeaturePlan.of(cat, dense, [spec.buckets] * spec.n_pairs)


def cross_with(assemble: AssembleFn, inputs: CrossInputs, spec: CrossSpec) -> CrossOutput:
    """The crossing contract computed by a backend's ``assemble``."""
    out = assemble(FeatureInputs.of_cross(inputs), plan_of_cross_spec(spec))
    return CrossOutput(hashed=out.cat, dense=out.dense)
