"""Small deterministic stand-ins for Triton and the item index, for unit tests of the stage logic
(tests/integration runs the same code against the real Triton and FAISS)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kernels import CrossSpec
from serving.config import Settings
from serving.errors import TritonError
from serving.pipeline.crossing import CrossingStage
from serving.pipeline.features import FeatureTables
from serving.pipeline.orchestration import RankPipeline
from serving.pipeline.ranking import RankingStage
from serving.pipeline.recall import RecallStage
from serving.repository.registry import ModelRegistry
from serving.triton.caller import ModelCaller
from serving.triton.digests import record_digests

N_USERS, N_ITEMS, D, E = 50, 300, 4, 8
SPEC = CrossSpec(pairs=((0, 0), (1, 1)), buckets=97, dense_dim=D)


class ExactIndex:
    """Exact inner-product search over item embeddings (the FAISS wrapper has its own tests)."""

    kind, on_gpu = "exact", False

    def __init__(self, emb: np.ndarray) -> None:
        self.emb = emb
        self.catalogue_version = 0

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, catalogue_version: int) -> None:
        emb = np.zeros((max(self.n_items, int(ids.max()) + 1), self.emb.shape[1]), dtype=np.float32)
        emb[: self.n_items] = self.emb
        emb[ids] = vectors
        self.emb, self.catalogue_version = emb, catalogue_version

    @property
    def n_items(self) -> int:
        return int(self.emb.shape[0])

    max_k = 64  # a small search limit, like faiss-gpu's 2048

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = q @ self.emb.T
        ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(s, ids, 1).astype(np.float32), ids.astype(np.int64)


class ScoringClient:
    """Scores rows by their dense dot feature; user tower = user dense padded to E. Records calls."""

    def __init__(self, fail: set[str] | None = None, delay_s: float = 0.0) -> None:
        self.fail = fail or set()
        self.delay_s = delay_s
        self.calls: list[tuple[str, str, int]] = []

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *,
                    version: str = "", timeout_s: float | None = None) -> dict[str, np.ndarray]:
        first = next(iter(inputs.values()))
        self.calls.append((model, version, first.shape[0]))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if model in self.fail:
            raise TritonError(f"{model} is down")
        if model == "user_tower":
            ud = inputs["user_dense"]
            return {"embedding": np.pad(ud, ((0, 0), (0, E - ud.shape[1]))).astype(np.float32)}
        dense = inputs["dense"]
        return {"score": (1 / (1 + np.exp(-dense[:, 3:4]))).astype(np.float32)}

    async def server_ready(self) -> bool:
        return "server" not in self.fail

    async def model_ready(self, name: str, version: str = "") -> bool:
        return name not in self.fail

    async def close(self) -> None:
        self.closed = True


def make_repo(root: Path) -> Path:
    """A repository with ``ranker`` (crossing spec SPEC) and ``user_tower``, version 1 each."""
    for name, meta in (("ranker", {"cross_spec": json.loads(SPEC.to_json())}), ("user_tower", {})):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n')
        (root / name / "1" / "meta.json").write_text(json.dumps(meta))
        record_digests(root / name / "1")  # as every version is written
    return root


def make_tables() -> FeatureTables:
    rng = np.random.default_rng(0)
    return FeatureTables(
        user_cat=rng.integers(1, 5, (N_USERS, 3)), user_dense=rng.normal(size=(N_USERS, D)).astype(np.float32),
        item_cat=rng.integers(1, 9, (N_ITEMS, 4)), item_num=rng.normal(size=(N_ITEMS, 3)).astype(np.float32),
        item_dense=rng.normal(size=(N_ITEMS, D)).astype(np.float32),
    )


def item_embedding(tables: FeatureTables, rows: np.ndarray) -> np.ndarray:
    """The fake item tower: item dense padded to E (so the fake user tower's dot is the score)."""
    return np.pad(tables.item_dense[rows], ((0, 0), (0, E - D))).astype(np.float32)


def make_pipeline(repo: Path, client: ScoringClient, cls: type[RankPipeline] = RankPipeline,
                  **overrides: Any) -> RankPipeline:
    """The real pipeline on fake Triton and index, with ``overrides`` of the settings."""
    tables = make_tables()
    settings = Settings(model_repository=repo, **{"recall_n": 40, "triton_retries": 1, **overrides})
    caller = ModelCaller(client, timeout_s=1.0, retries=1)
    index = ExactIndex(item_embedding(tables, np.arange(tables.n_items)))
    recall = RecallStage(tables, index, caller, "user_tower", 1, item_embedding, item_vectors=index.emb)
    return cls(settings, tables, ModelRegistry(repo), recall, CrossingStage(tables, "numpy"),
               RankingStage(caller, max_rows=64))
