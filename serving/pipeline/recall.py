"""Recall stage: user tower embedding (Triton), then top-N from the item index, with a popularity
fallback; and a seed item's nearest items in the same index (item-to-item).

Owns: the index searches that find candidates, and the item embeddings the index holds (the
queries of item-to-item recall, kept current with catalogue changes as the index is). Must not
touch: files (the index and embeddings come loaded), FAISS itself (any :class:`VectorIndex` will
do), the ranking model, which sources a scenario asks for (``serving.pipeline.candidates``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from serving.data.assembly import EncodedContextLike
from serving.data.tables import DataTables
from serving.data.tower import tower_inputs
from serving.errors import BackendUnavailableError
from serving.pipeline.features import TOWER_OUTPUT
from serving.triton.caller import ModelCaller

__all__ = ["ItemEmbedder", "Recall", "RecallStage", "VectorIndex"]


class VectorIndex(Protocol):
    """What recall needs of an item index (``serving.index.faiss_index.ItemIndex`` is one)."""

    kind: str
    on_gpu: bool
    catalogue_version: int

    @property
    def n_items(self) -> int: ...

    @property
    def max_k(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, catalogue_version: int) -> None: ...


# (tables, item rows) -> item embeddings float32 [rows, E], with the item tower of one version
ItemEmbedder = Callable[[DataTables, np.ndarray], np.ndarray]


class Recall(Protocol):
    """What the sources and the live state see of the recall stage (:class:`RecallStage`)."""

    model: str
    version: int
    index: VectorIndex
    label: str

    async def embed(self, user_rows: np.ndarray, *, deadline: float,
                    contexts: Sequence[EncodedContextLike | None] | None = None) -> np.ndarray: ...
    def search(self, embeddings: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]: ...
    def vectors(self, ids: np.ndarray) -> np.ndarray: ...
    def popular(self, n: int) -> tuple[np.ndarray, np.ndarray]: ...
    def apply(self, tables: DataTables, rows: np.ndarray, catalogue_version: int) -> None: ...
    def warm(self) -> None: ...


class RecallStage:
    """Finds candidates for users who gave none.

    Args:
        tables: feature tables (the user tower's inputs come from them).
        index: the item index built from the item tower of the same user tower version.
        caller: Triton model caller.
        model: user tower model name in Triton; ``version``: its version, matching ``index``.
        embed_items: the item tower of that version, for items a catalogue change adds or updates.
        label: what answers recalled here say they came from (``recall``): ``faiss``, or the
            kind of another index (``torch_exact``).
        item_vectors: the item embeddings ``index`` holds (row i: item i), the queries of
            item-to-item recall; None: this version has none and item-to-item is unavailable.
    """

    def __init__(self, tables: DataTables, index: VectorIndex, caller: ModelCaller, model: str, version: int,
                 embed_items: ItemEmbedder | None = None, *, label: str = "faiss",
                 item_vectors: np.ndarray | None = None) -> None:
        self.tables = tables
        self.index = index
        self.label = label
        self.caller = caller
        self.model = model
        self.version = version
        self.embed_items = embed_items
        self._vectors = None if item_vectors is None else np.ascontiguousarray(item_vectors, dtype=np.float32)
        pop = tables.popularity
        self._popular = np.argsort(-pop, kind="stable").astype(np.int64)
        self._popular_scores = pop[self._popular].astype(np.float32)

    async def embed(self, user_rows: np.ndarray, *, deadline: float,
                    contexts: Sequence[EncodedContextLike | None] | None = None) -> np.ndarray:
        """User embeddings float32 [len(user_rows), E] from the user tower in Triton; request ``q``
        is user row ``user_rows[q]`` with ``contexts[q]`` (None: no context)."""
        rows = np.asarray(user_rows, dtype=np.int64).reshape(-1)
        none = self.tables.encode_context(None)
        given = [none] * rows.shape[0] if contexts is None else [none if c is None else c for c in contexts]
        inputs = tower_inputs(self.tables, rows, given, self._vectors if self.tables.schema.context.sequences else None)
        out = await self.caller.infer(self.model, self.version, inputs, [TOWER_OUTPUT], deadline=deadline)
        return out[TOWER_OUTPUT]

    def search(self, embeddings: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items per query, at most the index's ``max_k``: (scores float32 [Q, n'], ids
        int64 [Q, n']); ids -1 pad. Excludes beyond that limit leave fewer candidates, never an error."""
        return self.index.search(np.ascontiguousarray(embeddings, dtype=np.float32), min(n, self.index.max_k))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The item embeddings of ``ids`` float32 [len(ids), E], as the index holds them.

        Raises:
            BackendUnavailableError: this version carries no item embeddings.
        """
        vec = self._vectors
        if vec is None:
            raise BackendUnavailableError(f"{self.model} v{self.version} carries no item embeddings "
                                          "(item_emb.npy): item-to-item recall is unavailable")
        return vec[np.asarray(ids, dtype=np.int64)]

    def apply(self, tables: DataTables, rows: np.ndarray, catalogue_version: int) -> None:
        """Put the items ``rows`` of ``tables`` (added or updated by catalogue changes up to
        ``catalogue_version``) into the index, embedded with this version's item tower."""
        if rows.size:
            if self.embed_items is None:
                raise RuntimeError(f"{self.model} v{self.version} has no item tower to embed changed items with")
            emb = self.embed_items(tables, rows)
            self.index.upsert(rows, emb, catalogue_version)
            if self._vectors is not None:  # a new array, swapped whole: searches in flight keep theirs
                vec = np.zeros((max(self._vectors.shape[0], int(rows.max()) + 1), self._vectors.shape[1]),
                               dtype=np.float32)
                vec[: self._vectors.shape[0]] = self._vectors
                vec[rows] = emb
                self._vectors = vec
        else:
            self.index.catalogue_version = catalogue_version

    def warm(self) -> None:
        """Load and run the item tower once, so the first catalogue change does not wait for it."""
        if self.embed_items is not None:
            self.embed_items(self.tables, np.zeros(1, dtype=np.int64))

    def popular(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular items (scores, ids): the recall of last resort."""
        return self._popular_scores[:n], self._popular[:n]
