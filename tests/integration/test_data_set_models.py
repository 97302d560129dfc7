"""A data set's trained default models load in a real Triton and answer their golden: the second
marketplace (context, sequences, numerics), and a bare schema that gives the user tower no column
and the ranker no dense one (each such input is exported one constant column wide, as Triton
refuses zero-width tensors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.config import Settings
from serving.data.schema import parse_schema
from serving.data.store import DataSetStore
from serving.repository.export import load_golden
from serving.repository.loading import startup_loader
from serving.repository.registry import ModelRegistry
from serving.triton.client import TritonClient
from serving.triton.config import read_config
from serving.triton.process import TritonProcess
from training.dataset_command import train_named
from training.synthetic import SCHEMA_YAML, write_marketplace

pytestmark = pytest.mark.integration

# The second marketplace's files declared with item categoricals alone: no user or context
# column, no numeric, no vector (user_cat, user_dense and the ranker's dense are all empty).
BARE = """\
items: {id: sku, categorical: [seller, department]}
users: {id: customer}
impressions: {user: customer, item: sku, label: clicked, time: shown_at}
"""


# (the bare schema's run is `slow`: make slow-test; make test keeps the marketplace's within its time budget)
@pytest.mark.parametrize("schema", [SCHEMA_YAML, pytest.param(BARE, marks=pytest.mark.slow)], ids=["marketplace", "bare"])
def test_a_trained_data_set_answers_its_golden_in_triton(tmp_path: Path, schema: str) -> None:
    files = write_marketplace(tmp_path / "files", n_items=300, n_users=150, n_impressions=4_000, seed=5)
    settings = Settings.model_validate({"data_dir": tmp_path / "data", "model_repository": tmp_path / "demo"})
    DataSetStore.of(settings).dataset("shop").import_files(parse_schema(schema), files["items"], files["users"],
                                                           files["impressions"])
    summary = train_named(settings, "shop", epochs=1, seed=0)
    repo = Path(summary["model_repository"])
    checked = []
    with TritonProcess(repo, runtime_dir=tmp_path / "rt", load=startup_loader(ModelRegistry(repo), keep_others=2)) \
            as server:
        client = TritonClient(server.grpc_url, server.key)
        for name, version in summary["versions"].items():
            cfg = read_config(repo, name)
            assert all(d >= 1 for t in cfg.input for d in t.dims), cfg.input
            golden = load_golden(repo / name / str(version))
            out = client.infer(name, {t.name: golden[t.name] for t in cfg.input}, [o.name for o in cfg.output],
                               version=str(version))
            for o in cfg.output:
                assert out[o.name].shape == golden[o.name].shape
                np.testing.assert_allclose(out[o.name], golden[o.name], rtol=1e-4, atol=1e-5)
                checked.append(name)
    assert sorted(checked) == ["ranker", "user_tower"]
