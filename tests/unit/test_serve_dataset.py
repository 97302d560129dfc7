"""Serving an imported data set (``rankserve serve --data NAME``): the start-up check, the default
scenarios written only where absent, and the pipeline on the data set's tables and trained models
(run in-process with TorchScript, as Triton would run them)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from serving.config import Settings
from serving.errors import ConfigError, ScenarioRefusedError, ValidationError
from serving.pipeline.assemble import create_pipeline, load_tables
from serving.repository.datasets import check_servable, install_default_scenarios
from serving.repository.registry import ModelRegistry
from serving.repository.scenarios import ScenarioStore
from serving.schemas import RankRequest, RankResponse
from serving.triton.inprocess import InProcessClient
from tests.unit.test_dataset_training import _cli  # the CLI with a data dir of its own
from training.synthetic import write_marketplace

NAME = "second"


@dataclass(frozen=True)
class Served:
    data_dir: Path
    settings: Settings


def _import(data_dir: Path, files: dict[str, Path], name: str) -> None:
    rc, out = _cli(data_dir, "data", "import", name, "--schema", str(files["schema"]), "--items", str(files["items"]),
                   "--users", str(files["users"]), "--impressions", str(files["impressions"]))
    assert rc == 0, out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("serve")
    files = write_marketplace(root / "files", n_items=400, n_users=200, n_impressions=8_000, seed=1)
    _import(root / "data", files, NAME)
    _import(root / "data", files, "untrained")
    rc, out = _cli(root / "data", "train", NAME, "--epochs", "1", "--seed", "0", "--json")
    assert rc == 0, out
    settings = Settings(data_dir=root / "data").for_data(NAME)
    return Served(root / "data", settings)


def test_an_untrained_or_unknown_data_set_is_refused_naming_what_to_run(served: Served) -> None:
    base = Settings(data_dir=served.data_dir)
    with pytest.raises(ConfigError) as err:
        check_servable(base.for_data("untrained"))
    assert "rankserve train untrained" in (err.value.hint or "")
    with pytest.raises(ConfigError) as err:
        check_servable(base.for_data("nothing"))
    assert "rankserve data import nothing" in (err.value.hint or "")
    check_servable(served.settings)
    rc, _ = _cli(served.data_dir, "scenarios", "list", "--data", "Not A Name")
    assert rc == 2


def test_default_scenarios_are_written_once_and_never_over_the_repository_s(served: Served) -> None:
    settings = served.settings
    tables = load_tables(settings)
    store = ScenarioStore(settings.model_repository)
    written = install_default_scenarios(settings, tables)
    assert set(written) | set(store.names()) >= {"home", "similar"}
    texts = {n: store.text(n, store.versions(n)[-1]) for n in ("home", "similar")}
    assert "space: embedding" in texts["similar"]  # the schema declares no item vector
    assert install_default_scenarios(settings, tables) == []
    assert {n: store.text(n, store.versions(n)[-1]) for n in ("home", "similar")} == texts
    rc, out = _cli(served.data_dir, "scenarios", "list", "--data", NAME)
    assert rc == 0 and {s["name"] for s in json.loads(out)["scenarios"]} >= {"home", "similar"}


def test_the_pipeline_ranks_a_data_set_with_its_trained_models(served: Served) -> None:
    settings = served.settings.model_copy(update={"cross_backend": "numpy"})
    install_default_scenarios(settings, load_tables(settings))
    registry = ModelRegistry(settings.model_repository)
    pipeline = create_pipeline(settings, InProcessClient(settings.model_repository), registry)
    from serving.repository.scenarios import use_live_scenarios

    use_live_scenarios(pipeline, registry)
    tables = pipeline.catalogue.tables
    assert tables.schema.items.id == "sku" and tables.n_items == 400

    def rank(**body: object) -> RankResponse:
        out, _ = asyncio.run(pipeline.run_batch([pipeline.prepare(RankRequest.model_validate(body))]))
        assert not isinstance(out[0], Exception), out[0]
        return out[0]

    user = str(tables.user_ids[0])
    answer = rank(user_id=user, k=10)
    assert len(answer.items) == 10 and not answer.degraded and not answer.cold_start
    assert all(isinstance(it.item_id, str) and 0.0 <= it.score <= 1.0 for it in answer.items)
    assert {it.item_id for it in answer.items} <= set(tables.item_ids.tolist())
    cands = [str(i) for i in tables.item_ids[:60]]
    plain = rank(user_id=user, candidates=[*cands, "no-such-item"], k=60)
    assert plain.unknown_candidates == 1 and {it.item_id for it in plain.items} == set(cands)
    # the context reaches the ranker's features and the user tower: the same candidates score otherwise
    recent = rank(user_id=user, candidates=cands, k=60, context={"recent": cands[:5], "device": "ios"})
    before = {it.item_id: it.score for it in plain.items}
    assert any(abs(before[it.item_id] - it.score) > 1e-6 for it in recent.items)
    assert rank(user_id="nobody", k=5).cold_start


SELLER_PAGE = """
name: seller_page
sources:
  - kind: popular
    within: request:seller
    count: 100
filters:
  restrict: request:seller
ranker: ranker
diversity: {per: department, max_items: 2}
limits: {default_k: 8, max_k: 10, max_candidates: 100}
"""


def test_scenarios_restrict_and_diversify_by_any_declared_group(served: Served) -> None:
    settings = served.settings.model_copy(update={"cross_backend": "numpy"})
    registry = ModelRegistry(settings.model_repository)
    pipeline = create_pipeline(settings, InProcessClient(settings.model_repository), registry)
    tables = pipeline.catalogue.tables
    groups = pipeline.catalogue.group_counts()
    assert set(groups) == {"seller", "department"}
    store = ScenarioStore(settings.model_repository)
    with pytest.raises(ScenarioRefusedError, match=r"unknown item group\(s\) \['store'\]"):
        store.check(SELLER_PAGE.replace("per: department", "per: store"), settings, registry, groups)
    sc = store.check(SELLER_PAGE, settings, registry, groups)
    pipeline.set_scenarios({"seller_page": sc})
    seller = next(iter(tables.vocab["item.seller"]))
    prep = pipeline.prepare(RankRequest(user_id=str(tables.user_ids[1]), scenario="seller_page",
                                        context={"seller": seller}))
    (answer,), _ = asyncio.run(pipeline.run_batch([prep]))
    assert not isinstance(answer, Exception), answer
    rows, _ = tables.item_rows([it.item_id for it in answer.items])
    seller_col, dept_col = tables.group_col("seller"), tables.group_col("department")
    assert len(answer.items) == 8 or len(answer.items) == int((tables.item_cat[:, seller_col]
                                                                == tables.vocab["item.seller"][seller]).sum())
    assert (tables.item_cat[rows, seller_col] == tables.vocab["item.seller"][seller]).all()
    _, per_dept = np.unique(tables.item_cat[rows, dept_col], return_counts=True)
    assert per_dept.max() <= 2
    with pytest.raises(ValidationError) as info:
        pipeline.prepare(RankRequest(user_id="u", scenario="seller_page"))
    assert info.value.field == "context.seller"


def test_a_catalogue_change_of_a_data_set_reaches_the_index_and_the_answers(served: Served) -> None:
    """``rankserve items add`` (Parquet and CSV of the data set's own columns) and ``items block``
    by the schema's ids; a replica's follower embeds the new items with the live item tower into
    its index before it publishes them: they are recalled, and known as candidates."""
    import threading

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from serving.index.item_tower import ItemEmbedder
    from serving.repository.catalogue import ChangeLog
    from serving.repository.followers import CatalogueFollower

    settings = served.settings.model_copy(update={"cross_backend": "numpy"})
    install_default_scenarios(settings, load_tables(settings))
    registry = ModelRegistry(settings.model_repository)
    pipeline = create_pipeline(settings, InProcessClient(settings.model_repository), registry)
    log = ChangeLog(settings.model_repository)
    follower = CatalogueFollower(pipeline.cell, log, threading.Event(), pipeline.cell.current.catalogue)
    items = pq.read_table(served.data_dir.parent / "files" / "items.parquet")
    n = items.num_rows
    first, second = items.slice(0, 2), items.slice(2, 1)
    first = first.set_column(0, "sku", pa.array(["sku-new-1", "sku-new-2"]))
    pq.write_table(first, served.data_dir.parent / "new.parquet")
    pacsv.write_csv(second.set_column(0, "sku", pa.array(["sku-new-3"])), served.data_dir.parent / "new.csv")
    for name in ("new.parquet", "new.csv"):
        rc, out = _cli(served.data_dir, "items", "add", str(served.data_dir.parent / name), "--data", NAME)
        assert rc == 0, out
    rc, out = _cli(served.data_dir, "items", "block", "sku-new-1", "--data", NAME)
    assert rc == 0, out
    assert follower.catch_up() == 3
    cat, recall = pipeline.catalogue, pipeline.recall
    assert cat.tables.n_items == recall.index.n_items == n + 3 and recall.index.catalogue_version == 3
    # the new items' embeddings are the item tower's of their rows, as a push would index them
    rows, known = cat.tables.item_rows(["sku-new-2", "sku-new-3"])
    assert known.all() and rows.tolist() == [n + 1, n + 2]
    embed = ItemEmbedder(registry.version_dir(settings.user_tower_model, recall.version))
    np.testing.assert_allclose(recall.vectors(rows), embed(cat.tables, rows), atol=1e-5)
    np.testing.assert_allclose(recall.vectors(rows), recall.vectors(np.array([1, 2])), atol=1e-5)  # same columns
    user = str(cat.tables.user_ids[0])
    prep = pipeline.prepare(RankRequest(user_id=user, k=3, candidates=["sku-new-1", "sku-new-2", "sku-new-3"]))
    (answer,), _ = asyncio.run(pipeline.run_batch([prep]))
    assert not isinstance(answer, Exception), answer
    assert answer.unknown_candidates == 0 and answer.catalogue_version == 3
    assert {it.item_id for it in answer.items} == {"sku-new-2", "sku-new-3"}  # sku-new-1 is blocked
    # a user tower pushed now indexes the catalogue as changed so far (as ``rankserve push`` does)
    import torch

    from serving.index.item_tower import index_catalogue

    version_dir = registry.version_dir(settings.user_tower_model, recall.version)
    towers = [torch.jit.load(str(version_dir / f), map_location="cpu").eval() for f in ("model.pt", "item_tower.pt")]
    index, emb = index_catalogue(*towers, log.current(load_tables(settings)).tables, catalogue_version=log.version)
    assert index.n_items == emb.shape[0] == n + 3
    np.testing.assert_allclose(emb[[n + 1, n + 2]], recall.vectors(rows), atol=1e-5)
