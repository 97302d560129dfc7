"""The encoded data set in memory: what every later stage (features, recall, training) reads.

Owns: :class:`DataTables` (items and users as code, number and vector arrays in row order, read
only, with the cold-start user as the users' last row; the vocabularies; the id lookups, built
once: sorted ids and ``np.searchsorted`` for integer ids, a dict for string ids that a catalogue
change's added items grow) and
:meth:`DataTables.encode_context`, which checks a request's ``context`` against the schema and
encodes it the way the import encoded the impressions' context (:class:`EncodedContext`). An id of
the other kind than the schema's (text where the ids are integers, or the reverse) is unknown,
never an error. Must not touch: files (``serving.data.store`` loads these), the request path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import InitVar, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any, Self

import numpy as np

from serving.data.schema import Schema
from serving.errors import ValidationError

__all__ = ["NO_CONTEXT", "DataTables", "EncodedContext"]

_INT64_MAX = np.iinfo(np.int64).max


class _IdIndex:
    """Row lookups of one table's ids (int64: sorted ids; strings: a dict).

    ``parent``: the index of the ids ``ids`` begins with (a catalogue change appended the rest).
    String ids then add only theirs to the parent's dict, shared with its first such child (each
    later child copies it): one line of catalogues writes into a dict, an id once. A lookup
    takes a row only where this table holds that id there, so older tables' lookups are
    unchanged. At 1M string ids, building the dict again took ~0.5 s a change.
    """

    def __init__(self, ids: np.ndarray, parent: _IdIndex | None = None) -> None:
        self.strings = ids.dtype == object
        self._ids = ids
        self._shared = False  # a child adds its ids to this index's dict
        self._rows: dict[object, int]
        if self.strings and parent is not None and parent.strings:
            self._rows = dict(parent._rows) if parent._shared else parent._rows
            parent._shared = True
            start = len(parent._ids)
            self._rows.update(zip(ids[start:].tolist(), range(start, len(ids)), strict=True))
        elif self.strings:
            self._rows = {v: i for i, v in enumerate(ids.tolist())}
        elif _is_range(ids):  # ids are the rows (the demo's): no sort, no copy
            self._order = self._sorted = ids
        else:
            self._order = np.argsort(ids, kind="stable")
            self._sorted = ids[self._order]

    def rows(self, ids: Iterable[Any] | np.ndarray) -> np.ndarray:
        """Rows (int64) of ``ids``; -1 for an unknown id or one of the other kind."""
        if self.strings:
            values = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
            n, held = len(self._ids), self._ids
            found = ((v, self._rows.get(v, -1)) if isinstance(v, str) else (v, -1) for v in values)
            return np.fromiter((r if 0 <= r < n and held[r] == v else -1 for v, r in found), np.int64, len(values))
        arr = ids if isinstance(ids, np.ndarray) else np.asarray(list(ids), dtype=object)
        if arr.dtype.kind in "iu" and not (arr.dtype.kind == "u" and arr.size and arr.max() > _INT64_MAX):
            return self._lookup(arr.astype(np.int64, copy=False), np.ones(arr.shape, bool))
        values = arr.tolist()
        usable = np.fromiter((_is_int64(v) for v in values), bool, len(values))
        keys = np.fromiter((v if ok else 0 for v, ok in zip(values, usable, strict=True)), np.int64, len(values))
        return self._lookup(keys, usable)

    def _lookup(self, keys: np.ndarray, usable: np.ndarray) -> np.ndarray:
        if not len(self._sorted):
            return np.full(keys.shape, -1, np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        found = usable & (self._sorted[pos] == keys)
        return np.where(found, self._order[pos], -1).astype(np.int64)


def _is_range(ids: np.ndarray) -> bool:
    """``ids`` are ``0, 1, ..., n-1``."""
    return ids.dtype.kind in "iu" and (ids.size == 0 or (int(ids[0]) == 0 and int(ids[-1]) == ids.size - 1
                                                         and bool((np.diff(ids) == 1).all())))


def _is_int64(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) \
        and -_INT64_MAX - 1 <= int(value) <= _INT64_MAX


@dataclass(frozen=True, eq=False)
class EncodedContext:
    """A request's context, encoded. Keys are the context fields' names (``device``, not ``context.device``).

    Attributes:
        categorical: every categorical context field -> its code (0: not given, or a value the
            impressions never held).
        numeric: every numeric context field -> its value standardised as the impressions' were
            (not given: their fill, the median).
        sequences: every sequence field -> item rows (int64), oldest first, unknown ids left
            out, the last ``max_len`` kept (not given: empty).
        groups: the item groups given -> the code of the value in the items' vocabulary (0: unseen),
            as the models and the stored impressions read it.
        scopes: the item groups given -> the value's group code in the catalogue
            (``DataTables.item_groups``), which also knows values only a catalogue change brought;
            -1 where no item ever held the value. What restrictions and popular-within read.
        given: the fields the request gave.
    """

    categorical: Mapping[str, int]
    numeric: Mapping[str, float]
    sequences: Mapping[str, np.ndarray]
    groups: Mapping[str, int]
    given: frozenset[str] = frozenset()
    scopes: Mapping[str, int] = field(default_factory=dict)

    @property
    def cat(self) -> Mapping[str, int]:
        """``categorical`` under the name the assembly reads (``serving.data.assembly.EncodedContextLike``)."""
        return self.categorical

    @property
    def num(self) -> Mapping[str, float]:
        """``numeric`` under the name the assembly reads."""
        return self.numeric


NO_CONTEXT = EncodedContext({}, {}, {}, {})  # a request without context (the demo's, whose schema has none)


@dataclass(frozen=True, eq=False)
class DataTables:
    """The encoded data set in memory (see the module docstring). Arrays are read only.

    Attributes:
        item_cat: int64 ``[n_items, len(items.categorical)]``, codes, 0 out of vocabulary.
        item_num: float32 ``[n_items, len(items.numeric)]``, standardised, nulls filled.
        item_vec: float32 ``[n_items, sum of widths]``, the items' vectors in declaration order.
        user_cat, user_num, user_vec: the same for users, with one more last row, the cold-start
            user (codes 0, zeros).
        popularity: float32 ``[n_items]``, ``log1p`` of the popularity column, standardised (zeros
            when none is declared).
        vocab: ``item.brand``, ``user.region``, ``context.device`` -> value -> code.
        context_numeric: a numeric context field -> (fill, mean, std) of the impressions' column;
            a field the impressions did not hold is taken as given.
        item_groups: int64 ``[n_items, len(items.groups)]``, each item's value of each group as
            the catalogue groups it (default: the group's codes in ``item_cat``). Unlike
            ``item_cat``, which the models read and where a value the import never saw is 0, a value
            that only a catalogue change brought has a code of its own here (``group_vocab``).
        group_vocab: group -> value -> group code (default: the group's import vocabulary);
            a catalogue change's new values extend it.
        context_held: the context fields (categorical, numeric, sequences) the impressions hold a
            column of (None: every one). The models learnt nothing from the others, which took
            their absent value in every impression: a request's value of one is checked, then read
            as absent too, so that serving gives the models what training gave them.
    """

    schema: Schema
    item_ids: np.ndarray
    user_ids: np.ndarray
    item_cat: np.ndarray
    item_num: np.ndarray
    item_vec: np.ndarray
    user_cat: np.ndarray
    user_num: np.ndarray
    user_vec: np.ndarray
    popularity: np.ndarray
    vocab: Mapping[str, Mapping[object, int]]
    context_numeric: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)
    item_groups: np.ndarray = None  # type: ignore[assignment]  # None: from item_cat (set in __post_init__)
    group_vocab: Mapping[str, Mapping[object, int]] = None  # type: ignore[assignment]  # None: the import's
    context_held: frozenset[str] | None = None
    grows: InitVar[DataTables | None] = None  # the tables whose item ids these extend (the id lookup grows)
    _items: _IdIndex = field(init=False, repr=False)
    _users: _IdIndex = field(init=False, repr=False)
    _item_vec: Mapping[str, slice] = field(init=False, repr=False)
    _user_vec: Mapping[str, slice] = field(init=False, repr=False)
    _kinds: Mapping[str, str | None] = field(init=False, repr=False)  # a context vocabulary -> the kind of its values

    def __post_init__(self, grows: DataTables | None) -> None:
        groups = self.schema.items.groups
        if self.item_groups is None:
            cols = [self.cat_col(f"item.{g}") for g in groups]
            object.__setattr__(self, "item_groups", np.ascontiguousarray(self.item_cat[:, cols], dtype=np.int64))
        if self.group_vocab is None:
            object.__setattr__(self, "group_vocab", {g: self.vocab.get(f"item.{g}", {}) for g in groups})
        self._check_shapes()
        for name in ("item_ids", "user_ids", "item_cat", "item_num", "item_vec", "user_cat", "user_num", "user_vec",
                     "popularity", "item_groups"):
            getattr(self, name).flags.writeable = False
        items = _IdIndex(self.item_ids, grows._items if grows is not None else None)
        derived = {"_items": items, "_users": _IdIndex(self.user_ids),
                   "_item_vec": _slices(self.schema.items.vectors), "_user_vec": _slices(self.schema.users.vectors),
                   "_kinds": {name: _vocab_kind(self.vocab.get(name, {})) for name in self._context_vocabs()}}
        for key, value in derived.items():
            object.__setattr__(self, key, value)

    def _check_shapes(self) -> None:
        n, u, items, users = len(self.item_ids), len(self.user_ids) + 1, self.schema.items, self.schema.users
        want = {"item_cat": (n, len(items.categorical)), "item_num": (n, len(items.numeric)),
                "item_vec": (n, sum(items.vectors.values())), "user_cat": (u, len(users.categorical)),
                "user_num": (u, len(users.numeric)), "user_vec": (u, sum(users.vectors.values())),
                "popularity": (n,), "item_groups": (n, len(items.groups))}
        wrong = {k: (getattr(self, k).shape, s) for k, s in want.items() if getattr(self, k).shape != s}
        if wrong:
            raise ValueError(f"the encoded arrays do not fit the schema (shape, expected): {wrong}")

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        """Users, the cold-start row not counted."""
        return len(self.user_ids)

    @property
    def cold_row(self) -> int:
        """The cold-start user's row in the users' arrays: the last one."""
        return self.n_users

    def with_item_tables(self, item_ids: np.ndarray, item_cat: np.ndarray, item_num: np.ndarray,
                         item_vec: np.ndarray, popularity: np.ndarray, *, appended: bool = False,
                         item_groups: np.ndarray | None = None,
                         group_vocab: Mapping[str, Mapping[object, int]] | None = None) -> Self:
        """These tables (users, vocabularies shared, not copied) with other item tables: a catalogue
        change. The same class as ``self``. ``appended``: ``item_ids`` are this table's ids and
        then new ones (the id lookup grows by the new ones rather than being built again).
        ``item_groups`` (default: from ``item_cat``) and ``group_vocab`` (default: this table's)."""
        out = object.__new__(type(self))
        fields = {f.name: getattr(self, f.name) for f in dataclass_fields(DataTables) if f.init}
        DataTables.__init__(out, **(fields | {"item_ids": item_ids, "item_cat": item_cat, "item_num": item_num,
                                              "item_vec": item_vec, "popularity": popularity,
                                              "item_groups": item_groups,
                                              "group_vocab": self.group_vocab if group_vocab is None else group_vocab}),
                            grows=self if appended else None)
        return out

    def item_vec_slice(self, name: str) -> slice:
        """The columns of ``item_vec`` holding the vector ``name`` (``content`` or ``item.content``)."""
        return _vec_slice(self._item_vec, name, "item")

    def user_vec_slice(self, name: str) -> slice:
        return _vec_slice(self._user_vec, name, "user")

    def cat_col(self, name: str) -> int:
        """``item.brand`` -> its column in ``item_cat`` (``user.*``: in ``user_cat``).

        Raises:
            KeyError: not a categorical column of the items or users.
        """
        return _column(self.schema, name, "categorical")

    def num_col(self, name: str) -> int:
        """``item.price`` -> its column in ``item_num`` (``user.*``: in ``user_num``).

        Raises:
            KeyError: not a numeric column of the items or users.
        """
        return _column(self.schema, name, "numeric")

    def group_col(self, group: str) -> int:
        """An item group (``store`` or ``item.store``) -> its column in ``item_groups``.

        Raises:
            KeyError: not one of the items' groups.
        """
        bare = group.removeprefix("item.")
        if bare not in self.schema.items.groups:
            raise KeyError(f"{group!r} is not an item group; the schema's are {list(self.schema.items.groups)}")
        return self.schema.items.groups.index(bare)

    def group_code(self, group: str, value: object) -> int:
        """``value``'s code in ``group`` as the catalogue groups items (``item_groups``); -1 where
        no item ever held it."""
        return int(self.group_vocab[group].get(value, -1))

    def user_row(self, user_id: object) -> tuple[int, bool]:
        """(row, cold start): an unknown user (or an id of the other kind) is the cold row."""
        row = int(self._users.rows([user_id])[0])
        return (row, False) if row >= 0 else (self.cold_row, True)

    def item_rows(self, ids: Iterable[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, known): rows (int64, -1 where unknown) of ``ids`` and the mask of those known."""
        rows = self._items.rows(ids)
        return rows, rows >= 0

    def _context_vocabs(self) -> list[str]:
        return [f"context.{f}" for f in self.schema.context.categorical] + [f"item.{g}" for g in self.schema.items.groups]

    def encode_context(self, context: Mapping[str, object] | None) -> EncodedContext:
        """A request's ``context``, checked against the schema and encoded (see :class:`EncodedContext`).
        A field given as null counts as not given.

        Raises:
            ValidationError: ``context`` is not an object, names a field the schema does not declare,
                or gives a value of the wrong type (``field`` is ``context.<name>``).
        """
        context = {} if context is None else context
        if not isinstance(context, Mapping):
            raise ValidationError(f"context must be an object, got {type(context).__name__}", field="context")
        ctx = self.schema.context
        allowed = self.schema.context_fields
        for name in context:
            if name not in allowed:
                raise ValidationError(f"unknown context field {name!r}; the schema declares {list(allowed)}",
                                      field=f"context.{name}")
        given = {k: v for k, v in context.items() if v is not None}
        categorical = {f: self.vocab[f"context.{f}"].get(_scalar(given[f], f, self._kinds[f"context.{f}"]), 0)
                       if f in given else 0 for f in ctx.categorical}
        numeric = {f: self._numeric(f, given.get(f)) for f in ctx.numeric}
        sequences = {f: self._sequence(f, given.get(f), spec.max_len) for f, spec in ctx.sequences.items()}
        if self.context_held is not None:  # checked above; read as absent, as the impressions had them
            held = self.context_held
            categorical = {f: c if f in held else 0 for f, c in categorical.items()}
            numeric = {f: x if f in held else 0.0 for f, x in numeric.items()}
            sequences = {f: r if f in held else r[:0] for f, r in sequences.items()}
        values = {g: _scalar(given[g], g, self._kinds[f"item.{g}"]) for g in self.schema.items.groups if g in given}
        groups = {g: self.vocab[f"item.{g}"].get(v, 0) for g, v in values.items()}
        scopes = {g: self.group_code(g, v) for g, v in values.items()}
        return EncodedContext(categorical, numeric, sequences, groups, frozenset(given), scopes)

    def _numeric(self, name: str, value: object) -> float:
        fill, mean, std = self.context_numeric.get(name, (0.0, 0.0, 1.0))
        if value is None:
            value = fill
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValidationError(f"context.{name} must be a finite number, got {value!r}", field=f"context.{name}")
        return (float(value) - mean) / std

    def _sequence(self, name: str, value: object, max_len: int) -> np.ndarray:
        if value is None:
            return np.zeros(0, np.int64)
        if not isinstance(value, (list, tuple)):
            raise ValidationError(f"context.{name} must be a list of item ids, got {type(value).__name__}",
                                  field=f"context.{name}")
        rows, known = self.item_rows(value)
        return rows[known][-max_len:]


def _scalar(value: object, name: str, kind: str | None) -> object:
    """``value`` when it is a scalar of ``kind``, the kind of every value the vocabulary holds (a
    value of another kind could only ever be out of vocabulary: a mistake, not an unseen value)."""
    if not isinstance(value, (str, int, float, bool)):
        raise ValidationError(f"context.{name} must be a string, a number or a boolean, got {type(value).__name__}",
                              field=f"context.{name}")
    if kind is not None and _kind(value) != kind:
        raise ValidationError(f"context.{name} must be {_a(kind)} (the data set's {name} values are {kind}s), "
                              f"got {value!r}", field=f"context.{name}")
    return value


def _vocab_kind(vocab: Mapping[object, int]) -> str | None:
    """The one kind of a vocabulary's values, or None (none seen, or several)."""
    kinds = {_kind(v) for v in vocab}
    return kinds.pop() if len(kinds) == 1 else None


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, np.integer)):
        return "integer"
    return "string" if isinstance(value, str) else "number"


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _slices(vectors: Mapping[str, int]) -> dict[str, slice]:
    out, at = {}, 0
    for name, width in vectors.items():
        out[name] = slice(at, at + width)
        at += width
    return out


def _vec_slice(slices: Mapping[str, slice], name: str, side: str) -> slice:
    bare = name.removeprefix(f"{side}.")
    if bare not in slices:
        raise KeyError(f"{name!r} is not a vector of the {side}s; the schema's are {list(slices)}")
    return slices[bare]


def _column(schema: Schema, name: str, kind: str) -> int:
    side, _, bare = name.partition(".")
    spec = schema.items if side == "item" else schema.users if side == "user" else None
    columns: tuple[str, ...] = getattr(spec, kind) if spec is not None else ()
    if bare not in columns:
        raise KeyError(f"{name!r} is not a {kind} column of the items or users (item.<column> or user.<column>)")
    return columns.index(bare)
