"""The ranker's inputs from a data set and a feature plan: the one assembly serving and training call.

Owns: the request side of a batch (:func:`request_side`: the user's and the context's columns, the
``mean`` blocks of the context's sequences), the one kernel call (:func:`assemble_features`), the
ranker's input tensors (:class:`RankerInputs`) and the training table of a data set's impressions
(:func:`feature_table`). Must not touch: the declaration's grammar (``serving.data.features``),
the kernels' internals (``kernels.dispatch`` chooses the backend), models, Triton, files.

Training and serving build features with these same functions, so a model is served exactly the
features it was trained on: :func:`feature_table` treats each impression as a request of one row
and assembles it as serving assembles that user, item and context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kernels import Crosser, FeatureInputs, FeaturePlan
from serving.data.features import FeatureSpec, SchemaTables, resolve
from serving.data.schema import Schema

__all__ = ["IMPRESSION_COLUMNS", "RANKER_INPUTS", "ContextColumns", "at_least_one_column", "DataTablesLike", "EncodedContextLike",
           "RankerInputs", "RequestSide", "assemble_features", "feature_table", "request_side",
           "sequence_means"]

# Tensor names of the ranker's inputs, in their positional order (config.pbtxt, export, serving).
RANKER_INPUTS = ("cat", "dense")
# The columns of a data set's encoded impressions that feature_table reads (besides the context
# fields, one column each under its own name): the user's and the item's rows, the label, the time.
IMPRESSION_COLUMNS = {"user": "user_row", "item": "item_row", "label": "label", "time": "time"}
_CHUNK_ROWS = 1 << 16


def at_least_one_column(x: Any) -> Any:
    """``x`` [B, W] itself, or when W is 0 one constant 0 column [B, 1] of its dtype and array kind
    (NumPy or CuPy): Triton refuses a zero-width tensor, so a side the schema gives no column gets
    this one, which no model reads (no embedding, a constant dense input)."""
    return x if x.shape[1] else x.sum(axis=1, keepdims=True) * 0


@dataclass(frozen=True)
class RankerInputs:
    """The ranker's two input tensors for B (request, candidate) rows: ``cat`` int64 [B, C] and
    ``dense`` float32 [B, D], in the order of the ranker's feature declaration (a declaration
    without cat or dense entries gets one constant 0 column there: :func:`at_least_one_column`)."""

    cat: np.ndarray
    dense: np.ndarray

    def tensors(self) -> dict[str, np.ndarray]:
        """The ranker's inputs by tensor name."""
        return dict(zip(RANKER_INPUTS, (self.cat, self.dense), strict=True))

    def rows(self, index: slice | np.ndarray) -> RankerInputs:
        """The inputs of the rows at ``index`` (a slice gives views, an array copies)."""
        return RankerInputs(cat=self.cat[index], dense=self.dense[index])


class DataTablesLike(SchemaTables, Protocol):
    """What the assembly reads of a data set (``serving.data.tables.DataTables`` has it): the
    encoded tables, the user tables with a last cold-start row."""

    @property
    def user_cat(self) -> np.ndarray: ...

    @property
    def user_num(self) -> np.ndarray: ...

    @property
    def user_vec(self) -> np.ndarray: ...

    @property
    def item_cat(self) -> np.ndarray: ...

    @property
    def item_num(self) -> np.ndarray: ...

    @property
    def item_vec(self) -> np.ndarray: ...

    @property
    def user_ids(self) -> np.ndarray: ...

    @property
    def item_ids(self) -> np.ndarray: ...


class EncodedContextLike(Protocol):
    """A request's context as the data set encodes it (``DataTables.encode_context``): codes and
    values by context field name, sequences as item rows (the most recent last)."""

    @property
    def cat(self) -> Mapping[str, int]: ...

    @property
    def num(self) -> Mapping[str, float]: ...

    @property
    def sequences(self) -> Mapping[str, np.ndarray]: ...


class RequestSide(NamedTuple):
    """A batch's request tables: ``q_cat`` int64 [Q, Cq], ``q_num`` float32 [Q, Nq], ``q_vec``
    float32 [Q, Vq] (see ``serving.data.features`` for their columns)."""

    q_cat: np.ndarray
    q_num: np.ndarray
    q_vec: np.ndarray


@dataclass(frozen=True)
class ContextColumns:
    """The contexts of Q requests, column by column.

    Attributes:
        cat: int64 [Q, len(context.categorical)], codes (0: absent or out of vocabulary).
        num: float32 [Q, len(context.numeric)] (0: absent).
        sequences: per context sequence in schema order, ``(offsets int64 [Q+1], item rows)``:
            request ``q``'s items are ``rows[offsets[q]:offsets[q+1]]``, at most the sequence's
            ``max_len`` (the most recent, which come last), unknown items (rows < 0) dropped.
    """

    cat: np.ndarray
    num: np.ndarray
    sequences: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def of_contexts(cls, schema: Schema, contexts: Sequence[EncodedContextLike]) -> ContextColumns:
        """From encoded request contexts (one per request)."""
        c, n = schema.context, len(contexts)
        cat = np.array([[ctx.cat.get(f, 0) for f in c.categorical] for ctx in contexts], np.int64)
        num = np.array([[ctx.num.get(f, 0.0) for f in c.numeric] for ctx in contexts], np.float32)
        seqs = []
        for name in c.sequences:
            items = [np.asarray(ctx.sequences.get(name, ()), np.int64).reshape(-1) for ctx in contexts]
            seqs.append((np.cumsum([0, *map(len, items)], dtype=np.int64), np.concatenate([np.zeros(0, np.int64), *items])))
        return cls._of(schema, cat.reshape(n, len(c.categorical)), num.reshape(n, len(c.numeric)), seqs)

    @classmethod
    def of_table(cls, schema: Schema, table: pa.Table) -> ContextColumns:
        """From a table with one column per context field (codes, values, lists of item rows), named
        ``context.<field>`` as a data set stores its impressions, or ``<field>``; a field without a
        column is absent from every row."""
        n, c = table.num_rows, schema.context
        have = {name.removeprefix("context."): name for name in reversed(table.column_names)}

        def values(name: str, dtype: Any) -> np.ndarray:
            return table.column(have[name]).fill_null(0).to_numpy().astype(dtype) if name in have \
                else np.zeros(n, dtype)

        seqs = []
        for name in c.sequences:
            if name not in have:
                seqs.append((np.zeros(n + 1, np.int64), np.zeros(0, np.int64)))
                continue
            lists = table.column(have[name]).combine_chunks()
            lengths = pc.list_value_length(lists).fill_null(0).to_numpy()
            seqs.append((np.cumsum([0, *lengths], dtype=np.int64), lists.flatten().to_numpy().astype(np.int64)))
        cat = _side_by_side([values(f, np.int64) for f in c.categorical], n, np.int64)
        num = _side_by_side([values(f, np.float32) for f in c.numeric], n, np.float32)
        return cls._of(schema, cat, num, seqs)

    @classmethod
    def _of(cls, schema: Schema, cat: np.ndarray, num: np.ndarray,
            sequences: list[tuple[np.ndarray, np.ndarray]]) -> ContextColumns:
        specs = schema.context.sequences.values()
        return cls(cat=cat, num=num, sequences=tuple(_recent_known(offsets, rows, spec.max_len)
                                                     for (offsets, rows), spec in zip(sequences, specs, strict=True)))


def _side_by_side(columns: list[np.ndarray], n: int, dtype: Any) -> np.ndarray:
    """[n, len(columns)]: the columns side by side (none: an empty [n, 0])."""
    return np.stack(columns, axis=1) if columns else np.zeros((n, 0), dtype)


def _recent_known(offsets: np.ndarray, rows: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Each request's known items (rows >= 0), at most the last ``max_len``."""
    seg = np.repeat(np.arange(offsets.shape[0] - 1), np.diff(offsets))
    keep = rows >= 0
    seg, rows = seg[keep], rows[keep]
    counts = np.bincount(seg, minlength=offsets.shape[0] - 1)
    ends = np.cumsum(counts)
    from_end = ends[seg] - np.arange(rows.shape[0])  # 1 for each request's last item
    keep = from_end <= max_len
    counts = np.bincount(seg[keep], minlength=offsets.shape[0] - 1)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), rows[keep]


def sequence_means(item_vec: np.ndarray, offset: int, width: int, offsets: np.ndarray,
                    rows: np.ndarray) -> np.ndarray:
    """float32 [Q, width]: each request's mean of its items' ``item_vec[:, offset:offset+width]``
    (0 when it has none); ``offsets``/``rows`` as one of :attr:`ContextColumns.sequences`."""
    lengths = np.diff(offsets)
    out = np.zeros((lengths.shape[0], width), np.float32)
    some = lengths > 0
    if some.any():
        sums = np.add.reduceat(item_vec[rows, offset:offset + width], offsets[:-1][some], axis=0, dtype=np.float32)
        out[some] = sums / lengths[some, None].astype(np.float32)
    return out


def request_side(tables: DataTablesLike, user_rows: np.ndarray,
                 contexts: Sequence[EncodedContextLike] | ContextColumns, plan: FeaturePlan) -> RequestSide:
    """The request tables of Q requests: request ``q`` is user row ``user_rows[q]`` (the cold row
    for an unknown user) with ``contexts[q]``."""
    rows = np.asarray(user_rows, dtype=np.int64)
    ctx = contexts if isinstance(contexts, ContextColumns) else ContextColumns.of_contexts(tables.schema, contexts)
    means = [sequence_means(tables.item_vec, offset, width, *ctx.sequences[seq])
             for seq, offset, width in plan.means.tolist()]
    return RequestSide(q_cat=np.concatenate([tables.user_cat[rows], ctx.cat], axis=1),
                       q_num=np.concatenate([tables.user_num[rows], ctx.num], axis=1, dtype=np.float32),
                       q_vec=np.concatenate([tables.user_vec[rows], *means], axis=1, dtype=np.float32))


def assemble_features(tables: DataTablesLike, plan: FeaturePlan, side: RequestSide, req_of: np.ndarray,
                      item_rows: np.ndarray, backend: Crosser) -> RankerInputs:
    """The ranker's inputs of B rows, row ``b`` pairing request ``req_of[b]`` of ``side`` with item
    row ``item_rows[b]``, in one kernel launch of ``backend``."""
    out = backend.assemble(FeatureInputs(np.ascontiguousarray(req_of, dtype=np.int64),
                                         np.ascontiguousarray(item_rows, dtype=np.int64), *side,
                                         tables.item_cat, tables.item_num, tables.item_vec), plan)
    return RankerInputs(cat=at_least_one_column(out.cat), dense=at_least_one_column(out.dense))


def _list_column(values: np.ndarray) -> pa.Array:
    n, width = values.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32)),
                                    pa.array(values.reshape(-1)))


def feature_table(tables: DataTablesLike, impressions: pa.Table, spec: FeatureSpec, backend: Crosser) -> pa.Table:
    """The training table of ``impressions`` (a data set's encoded impressions, columns
    :data:`IMPRESSION_COLUMNS` and the context fields): ``user_id``, ``item_id``, ``time`` (when
    the impressions have it), ``cat`` (list<int64>), ``dense`` (list<float32>) and ``label``, each
    row's features what serving assembles for the same user, item and context.

    Raises:
        FeaturesError: ``spec`` does not resolve against the data set.
    """
    plan = resolve(spec, tables)
    cols = IMPRESSION_COLUMNS
    batches = []
    for start in range(0, max(impressions.num_rows, 1), _CHUNK_ROWS):
        chunk = impressions.slice(start, _CHUNK_ROWS)
        users = chunk.column(cols["user"]).to_numpy().astype(np.int64)
        items = chunk.column(cols["item"]).to_numpy().astype(np.int64)
        side = request_side(tables, users, ContextColumns.of_table(tables.schema, chunk), plan)
        x = assemble_features(tables, plan, side, np.arange(users.shape[0]), items, backend)
        out: dict[str, Any] = {"user_id": pa.array(tables.user_ids[users]), "item_id": pa.array(tables.item_ids[items])}
        if cols["time"] in chunk.column_names:
            out["time"] = chunk.column(cols["time"])
        out |= {"cat": _list_column(x.cat), "dense": _list_column(x.dense), "label": chunk.column(cols["label"])}
        batches.append(pa.table(out))
    return pa.concat_tables(batches)
