"""The user tower's inputs from a data set: the one function serving and training both call.

Owns: :func:`tower_inputs`, the layout of the user tower's two input tensors (``user_cat`` and
``user_dense``, today's tensor names) for any schema: the user's categorical codes then the
context's; the user's numerics, the context's numerics, the user's vectors, and for each context
sequence (schema order) the mean of its items' item-tower embeddings. Also :func:`tower_widths`,
what a tower trained on a schema expects (its ``meta.json`` records it). Must not touch: models,
the item tower itself (the caller passes its embeddings), Triton, files.

For the demo (no context, no user numerics) this is exactly the demo tower's inputs: the user's
three codes and the interest vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.data.assembly import (
    ContextColumns,
    DataTablesLike,
    EncodedContextLike,
    at_least_one_column,
    sequence_means,
)
from serving.data.schema import Schema

__all__ = ["CONSTANT_COLUMN", "TOWER_INPUTS", "tower_inputs", "tower_widths"]

# Tensor names of the user tower's inputs, in their positional order.
TOWER_INPUTS = ("user_cat", "user_dense")
# The name ``tower_widths`` gives the constant 0 column of an input the schema gives no column
# (Triton refuses zero-width tensors; no model reads it).
CONSTANT_COLUMN = "constant"


def tower_widths(schema: Schema, embedding_dim: int) -> dict[str, Any]:
    """What a user tower of ``schema`` reads, as its ``meta.json`` records it: the ``cat`` and
    ``dense`` column names (``user.x``, ``context.y``), the context ``sequences`` whose mean item
    embedding closes ``dense``, and that embedding's width. ``len(cat)`` is the width of
    ``user_cat``; ``user_dense`` is ``len(dense) + embedding_dim * len(sequences)`` wide, where
    ``dense`` counts one name per vector column (its width from the schema). An input the schema
    gives no column (no sequence either, for ``dense``) is one :data:`CONSTANT_COLUMN` wide."""
    users, ctx = schema.users, schema.context
    cat = [f"user.{c}" for c in users.categorical] + [f"context.{c}" for c in ctx.categorical]
    dense = [f"user.{c}" for c in users.numeric] + [f"context.{c}" for c in ctx.numeric] \
        + [f"user.{c}" for c in users.vectors]
    return {"cat": cat or [CONSTANT_COLUMN], "dense": dense or ([] if ctx.sequences else [CONSTANT_COLUMN]),
            "sequences": [f"context.{c}" for c in ctx.sequences], "embedding_dim": int(embedding_dim)}


def tower_inputs(tables: DataTablesLike, user_rows: np.ndarray,
                 contexts: Sequence[EncodedContextLike] | ContextColumns,
                 item_emb: np.ndarray | None) -> dict[str, np.ndarray]:
    """The user tower's inputs for Q requests: request ``q`` is user row ``user_rows[q]`` (the cold
    row for an unknown user) with ``contexts[q]``.

    Returns:
        ``user_cat`` int64 [Q, Cu + Cc]: the user's categorical codes then the context's (schema
        order). ``user_dense`` float32 [Q, Nu + Nc + Vu + E*S]: the user's numerics, the context's
        numerics, the user's vectors, then for each context sequence (schema order) the mean of its
        items' rows of ``item_emb`` (float32 [n_items, E]; zeros for an empty sequence).
        ``item_emb=None`` leaves the sequence blocks out (E = 0): a training loop computes them
        in-graph from its item tower, and a schema without sequences needs none. An input the
        schema gives no column (nor a sequence, for ``user_dense``) is one constant 0 column.
    """
    rows = np.asarray(user_rows, dtype=np.int64).reshape(-1)
    ctx = contexts if isinstance(contexts, ContextColumns) else ContextColumns.of_contexts(tables.schema, contexts)
    if ctx.cat.shape[0] != rows.shape[0]:
        raise ValueError(f"{rows.shape[0]} user rows but {ctx.cat.shape[0]} contexts")
    means = []
    if item_emb is not None:
        emb = np.asarray(item_emb, dtype=np.float32)
        means = [sequence_means(emb, 0, emb.shape[1], offsets, seq_rows) for offsets, seq_rows in ctx.sequences]
    user_cat = np.concatenate([tables.user_cat[rows], ctx.cat], axis=1, dtype=np.int64)
    user_dense = np.concatenate([tables.user_num[rows], ctx.num, tables.user_vec[rows], *means], axis=1,
                                dtype=np.float32)
    if not ctx.sequences:  # (with sequences, user_dense is never empty once their blocks are added)
        user_dense = at_least_one_column(user_dense)
    return dict(zip(TOWER_INPUTS, (at_least_one_column(user_cat), user_dense), strict=True))
