"""Builds the pipeline's stages from settings, the feature tables and the model repository.

Owns: which tables a process serves (:func:`load_tables`), the recall stage's factory (a user tower version with the index of the same version) and
the wiring of the whole pipeline. Must not touch: Ray, HTTP, gRPC; it reads the repository only
through :class:`serving.pipeline.orchestration.ModelRepository`.

FAISS is imported only when the index is loaded here: a caller that brings its own index (the GPU
check's ``torch_exact`` on a machine without FAISS) never imports it.
"""

from __future__ import annotations

import numpy as np

from kernels import set_cpu_threads
from serving.config import DEMO_DATA, Settings
from serving.data.store import DataSetStore
from serving.data.tables import DataTables
from serving.errors import BackendUnavailableError
from serving.index.item_tower import ItemEmbedder
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.crossing import CrossingStage
from serving.pipeline.features import FeatureTables
from serving.pipeline.orchestration import ModelRepository, RankPipeline
from serving.pipeline.ranking import RankingStage
from serving.pipeline.recall import RecallStage, VectorIndex
from serving.triton.caller import AsyncInferClient, ModelCaller
from serving.triton.config import read_config

__all__ = ["create_pipeline", "load_tables", "make_caller", "make_recall"]


def make_caller(settings: Settings, client: AsyncInferClient) -> ModelCaller:
    """The Triton model caller with the configured per-call timeout and retries."""
    return ModelCaller(client, timeout_s=settings.triton_timeout_s, retries=settings.triton_retries)


def make_recall(settings: Settings, repository: ModelRepository, cat: Catalogue, caller: ModelCaller,
                version: int, *, index: VectorIndex | None = None) -> RecallStage:
    """The recall stage of one user tower version, with the item index and item tower from the
    same version: its FAISS index, or ``index`` when the caller built one from that version
    (labelled by its kind). The index holds the catalogue at the change it was built with; the
    caller brings it up to ``cat`` (``RecallStage.apply``) before using it."""
    label = "faiss"
    tower_dir = repository.version_dir(settings.user_tower_model, version)
    if index is None:
        from serving.index.faiss_index import load_index

        index = load_index(tower_dir / "items.faiss", use_gpu=settings.faiss_gpu)
    else:
        label = index.kind
    if index.catalogue_version == cat.version and index.n_items != cat.tables.n_items:
        raise BackendUnavailableError(
            f"index of {settings.user_tower_model} v{version} has {index.n_items} items, "
            f"catalogue has {cat.tables.n_items}"
        )
    emb_file = tower_dir / "item_emb.npy"  # the embeddings the index was built from: item-to-item queries
    vectors = np.load(emb_file) if emb_file.is_file() else None
    if vectors is not None and vectors.shape[0] != index.n_items:
        vectors = None  # not the index's items: no item-to-item rather than wrong neighbours
    return RecallStage(cat.tables, index, caller, settings.user_tower_model, version, ItemEmbedder(tower_dir),
                       label=label, item_vectors=vectors)


def load_tables(settings: Settings) -> DataTables:
    """The tables ``settings.data`` names (``RANKSERVE_DATA``, ``--data``): the demo's built ones,
    or the live version of an imported data set."""
    if settings.data == DEMO_DATA:
        return FeatureTables.load(settings.marketplace_path)
    return DataSetStore.of(settings).dataset(settings.data).tables()


def create_pipeline(settings: Settings, client: AsyncInferClient, repository: ModelRepository, *,
                    index: VectorIndex | None = None) -> RankPipeline:
    """Load tables, index and model metadata and wire the stages (in-process; no Ray needed).
    Native CPU code in this process gets ``settings.cpu_threads`` threads.

    Args:
        index: the live user tower version's item index, built by the caller; default: its FAISS
            index, loaded here.
    """
    if index is None:
        from serving.index.faiss_index import set_search_threads

        set_search_threads(settings.cpu_threads)
    set_cpu_threads(settings.cpu_threads)
    tables = load_tables(settings)
    caller = make_caller(settings, client)
    recall = make_recall(settings, repository, Catalogue.initial(tables), caller,
                         repository.traffic(settings.user_tower_model).live, index=index)
    max_rows = read_config(settings.model_repository, settings.ranker_model).max_batch_size
    return RankPipeline(settings, tables, repository, recall, CrossingStage(tables, settings.cross_backend),
                        RankingStage(caller, max_rows))
