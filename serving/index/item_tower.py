"""The item tower a user tower version carries, and the item index built with it.

Owns: loading ``item_tower.pt`` (TorchScript: ``(item_cat, item_num, item_dense) -> embedding``),
embedding catalogue rows with it, and building a version's index from the catalogue as changed
so far. A push and the first build index the whole catalogue this way; a replica embeds only the
items a catalogue change adds or updates. Must not touch: traffic, Triton, requests.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.data.tables import DataTables
from serving.data.tower import tower_inputs
from serving.errors import BackendUnavailableError

if TYPE_CHECKING:
    from serving.index.faiss_index import ItemIndex

__all__ = ["ITEM_TOWER_FILE", "ItemEmbedder", "embed_items", "index_catalogue"]

ITEM_TOWER_FILE = "item_tower.pt"
_CHUNK = 65_536


def embed_items(item_tower: Any, tables: DataTables, rows: np.ndarray | None = None) -> np.ndarray:
    """Embeddings float32 [len(rows), E] of catalogue rows (all items when ``rows`` is None)."""
    import torch

    rows = np.arange(tables.n_items, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    parts = []
    with torch.inference_mode():
        for lo in range(0, rows.size, _CHUNK):
            r = rows[lo: lo + _CHUNK]
            out = item_tower(torch.from_numpy(tables.item_cat[r]), torch.from_numpy(tables.item_num[r]),
                             torch.from_numpy(tables.item_vec[r]))
            parts.append(out.numpy())
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def index_catalogue(user_tower: Any, item_tower: Any, tables: DataTables, *,
                    catalogue_version: int = 0) -> tuple[ItemIndex, np.ndarray]:
    """The item index of one user tower version over every item of ``tables`` (the catalogue at
    change ``catalogue_version``), with ``nprobe`` tuned on that tower's user embeddings, and the
    embeddings it holds."""
    from serving.index.faiss_index import build_index, tower_queries  # FAISS only where an index is built

    emb = embed_items(item_tower, tables)
    users = np.arange(tables.n_users, dtype=np.int64)
    given = tower_inputs(tables, users, [tables.encode_context(None)] * users.shape[0], emb)
    queries = tower_queries(user_tower, given["user_cat"], given["user_dense"])
    return build_index(emb, queries=queries, catalogue_version=catalogue_version), emb


class ItemEmbedder:
    """The item tower of one version directory, loaded on first use (a replica that sees no
    catalogue change never loads torch for it)."""

    def __init__(self, version_dir: Path) -> None:
        self.path = Path(version_dir) / ITEM_TOWER_FILE
        self._module: Any = None
        self._lock = threading.Lock()

    def __call__(self, tables: DataTables, rows: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._module is None:
                if not self.path.is_file():
                    raise BackendUnavailableError(f"{self.path} is missing: this user tower version carries no "
                                                  "item tower, so items cannot be added or updated; push one that does")
                import torch

                self._module = torch.jit.load(str(self.path), map_location="cpu").eval()
        return embed_items(self._module, tables, rows)
