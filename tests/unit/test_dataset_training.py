"""``rankserve train NAME`` and ``rankserve features NAME`` on a small second marketplace whose
clicks come from a known model (training.synthetic): the default declaration of three schema
shapes, the holdout, the figures, what is exported, the exported ranker against the truth, the
context changing the tower's recall, and a failed export leaving the repository as it was."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kernels import get_crosser
from serving.cli import main
from serving.data.assembly import feature_table
from serving.data.default_features import default_features
from serving.data.features import load_features, read_features_json, resolve
from serving.data.schema import Schema, load_schema, parse_schema
from serving.data.store import DataSetStore
from serving.data.tables import DataTables
from serving.data.tower import tower_inputs
from serving.errors import SetupError
from serving.repository.export import load_golden
from serving.repository.registry import ModelRegistry
from tests.unit.data_fakes import DEMO_SCHEMA, SCHEMA, FakeContext, random_tables
from tests.unit.data_files import rankserve_env as _env
from training import dataset_export
from training.dataset_train import holdout_mask, ndcg_at, pair_agreement, prepare, request_ids
from training.synthetic import DEPARTMENTS, SCHEMA_YAML, click_probability, write_marketplace

SEED = 3
NAME = "shop"

# The example of the data set reference (content vectors on both sides, a context sequence).
EXAMPLE = parse_schema("""
items: {id: sku, categorical: [brand, category, store], numeric: [price, rating], vectors: {content: 64},
        popularity: sales_7d, groups: [store, category]}
users: {id: customer, categorical: [region, tier], numeric: [age], vectors: {taste: 64}}
context: {categorical: [device], sequences: {recent: {of: items, max_len: 20}}}
impressions: {user: customer, item: sku, label: clicked, time: ts}
""")


@dataclass(frozen=True)
class Trained:
    data_dir: Path
    files: dict[str, Path]
    summary: dict
    repo: Path


def _cli(data_dir: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with _env(data_dir), contextlib.redirect_stdout(out):
        rc = main(list(argv))
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("train")
    files = write_marketplace(root / "files", n_items=600, n_users=300, n_impressions=20_000, seed=SEED)
    rc, _ = _cli(root / "data", "data", "import", NAME, "--schema", str(files["schema"]), "--items",
                 str(files["items"]), "--users", str(files["users"]), "--impressions", str(files["impressions"]))
    assert rc == 0
    rc, out = _cli(root / "data", "train", NAME, "--epochs", "1", "--seed", "0", "--json")
    assert rc == 0, out
    summary = json.loads(out)
    return Trained(root / "data", files, summary, Path(summary["model_repository"]))


def _tables(t: Trained) -> tuple[DataTables, pa.Table]:
    ds = DataSetStore(t.data_dir).dataset(NAME)
    return ds.tables(), ds.impressions()


@pytest.mark.parametrize("schema", [EXAMPLE, parse_schema(SCHEMA_YAML), DEMO_SCHEMA, SCHEMA],
                         ids=["example", "no-vectors", "demo", "every-kind"])
def test_the_default_declaration_resolves_for_each_schema_shape(schema: Schema) -> None:
    spec = default_features(schema)
    plan = resolve(spec, random_tables(0, schema=schema))
    users, items, ctx = schema.users, schema.items, schema.context
    assert plan.n_cat == len(spec.cat) and plan.n_dense >= len(spec.dense)
    for name in [*users.categorical, *users.numeric]:
        assert any(e == f"user.{name}" for e in spec.cat + spec.dense)
    crosses = [e for e in spec.cat if e.startswith("cross(")]
    assert len(crosses) == min(16, (len(users.categorical) + len(ctx.categorical))
                               * len(items.groups or items.categorical))
    assert all("buckets=100003" in c for c in crosses)
    if "content" in items.vectors and "taste" in users.vectors:  # equal widths: dot and prod
        assert {"dot(user.taste, item.content)", "prod(user.taste, item.content)"} <= set(spec.dense)
    assert len([e for e in spec.dense if e.startswith("mean(")]) == len(ctx.sequences) * len(items.vectors)


def test_the_holdout_is_the_latest_tenth_by_time_else_a_seeded_random_tenth() -> None:
    times = np.random.default_rng(0).permutation(1000).astype(float)
    test = holdout_mask(1000, times, seed=0)
    assert test.sum() == 100 and times[test].min() > times[~test].max()
    a, b = holdout_mask(1000, None, seed=1), holdout_mask(1000, None, seed=1)
    assert a.sum() == 100 and np.array_equal(a, b) and not np.array_equal(a, holdout_mask(1000, None, seed=2))


def test_requests_group_a_users_impressions_at_one_time_else_the_users() -> None:
    users = np.array([0, 0, 0, 1, 1, 1])
    shown = request_ids(users, np.array([5.0, 5.0, 6.0, 5.0, 5.0, 5.0]))
    assert shown.tolist() == [0, 0, 1, 2, 2, 2]
    assert request_ids(users, None).tolist() == [0, 0, 0, 1, 1, 1]
    assert request_ids(users, np.arange(6.0)).tolist() == [0, 0, 0, 1, 1, 1]  # every impression stamped apart
    scores, labels = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.7]), np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    best = ndcg_at(np.array([0.1, 0.9, 0.5, 0.9, 0.2, 0.1]), labels, shown)
    assert best == 1.0 and ndcg_at(scores, labels, shown) < 1.0  # the lone impression of request 1 is left out


def test_train_prints_the_holdout_figures_and_exports_both_models(trained: Trained) -> None:
    m = trained.summary["metrics"]
    assert m["holdout"] == "time" and m["holdout_impressions"] == 2000
    assert 0.6 < m["auc"] <= 1 and m["log_loss"] < m["log_loss_base_rate"] and 0 <= m["ece"] < 0.1
    assert 0 < m["recall_at_500"] <= 1 and 0 < m["ndcg_at_20"] <= 1
    assert trained.summary["versions"] == {"ranker": 1, "user_tower": 1}
    registry = ModelRegistry(trained.repo)
    assert registry.traffic("ranker").live == 1 and registry.traffic("user_tower").live == 1
    ranker, tower = trained.repo / "ranker" / "1", trained.repo / "user_tower" / "1"
    for f in ("model.pt", "model.py", "golden.npz", "meta.json", "digests.json", "features.yaml", "features.json"):
        assert (ranker / f).is_file(), f
    for f in ("item_tower.pt", "item_emb.npy", "items.faiss", "digests.json"):
        assert (tower / f).is_file(), f
    meta = json.loads((ranker / "meta.json").read_text())
    assert meta["data_set"] == NAME and meta["data_version"] == 1 and meta["quality"]["auc"] == m["auc"]
    spec, plan = read_features_json(ranker / "features.json")
    assert spec == load_features(ranker / "features.yaml") and plan.n_cat == 12
    widths = json.loads((tower / "meta.json").read_text())["tower_inputs"]
    assert widths == {"cat": ["user.tier", "user.region", "context.device"], "dense": ["user.tenure_days"],
                      "sequences": ["context.recent"], "embedding_dim": 32}


@pytest.mark.parametrize("model", ["ranker", "user_tower"])
def test_the_golden_outputs_are_what_the_exported_model_gives(trained: Trained, model: str) -> None:
    golden = load_golden(trained.repo / model / "1")
    module = torch.jit.load(str(trained.repo / model / "1" / "model.pt"))
    names = ("cat", "dense", "score") if model == "ranker" else ("user_cat", "user_dense", "embedding")
    with torch.inference_mode():
        out = module(torch.from_numpy(golden[names[0]]), torch.from_numpy(golden[names[1]])).numpy()
    np.testing.assert_allclose(out, golden[names[2]], rtol=1e-5, atol=1e-6)


def test_the_exported_ranker_agrees_with_the_true_click_probability_on_most_pairs(trained: Trained) -> None:
    tables, impressions = _tables(trained)
    data = prepare(tables, impressions, seed=0)
    test = np.flatnonzero(data.test)
    version = trained.repo / "ranker" / "1"
    table = feature_table(tables, impressions.take(test), load_features(version / "features.yaml"), get_crosser("numpy"))
    ranker = torch.jit.load(str(version / "model.pt"))
    with torch.inference_mode():
        scores = ranker(torch.tensor(table.column("cat").to_pylist()),
                        torch.tensor(table.column("dense").to_pylist(), dtype=torch.float32)).numpy().reshape(-1)
    raw = pq.read_table(trained.files["impressions"]).take(test)  # the import kept every row, in order
    truth = click_probability(pq.read_table(trained.files["items"]), pq.read_table(trained.files["users"]),
                              raw.column("customer").to_pylist(), raw.column("sku").to_pylist(),
                              raw.column("device").to_pylist(), raw.column("recent").to_pylist(), seed=SEED)
    request = data.request[test]
    model = pair_agreement(truth, scores, request)
    chance = pair_agreement(truth, np.random.default_rng(0).random(test.size), request)
    popular = pair_agreement(truth, tables.popularity[data.items[test]].astype(np.float64), request)
    assert model >= 0.6, (model, chance, popular)
    assert abs(chance - 0.5) < 0.05 and abs(popular - 0.5) < 0.05, (chance, popular)


def test_the_recent_items_change_what_the_exported_tower_recalls(trained: Trained) -> None:
    tables, impressions = _tables(trained)
    version = trained.repo / "user_tower" / "1"
    tower = torch.jit.load(str(version / "model.pt"))
    emb = np.load(version / "item_emb.npy")
    department = tables.item_cat[:, tables.cat_col("item.department")]
    shares = []
    for name in ("books", "toys"):
        code = tables.vocab["item.department"][name]
        recent = np.flatnonzero(department == code)[:8]
        x = tower_inputs(tables, np.arange(50), [FakeContext(sequences={"recent": recent})] * 50, emb)
        with torch.inference_mode():
            users = tower(torch.from_numpy(x["user_cat"]), torch.from_numpy(x["user_dense"])).numpy()
        top = np.argsort(-(users @ emb.T), axis=1)[:, :50]
        shares.append(float((department[top] == code).mean()))
    base = 1 / len(DEPARTMENTS)
    assert shares[0] > 1.5 * base and shares[1] > 1.5 * base, shares


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def test_a_failed_export_leaves_the_repository_as_it_was(trained: Trained, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from training.dataset_train import train_data_set

    tables, impressions = _tables(trained)
    model = train_data_set(tables, impressions, default_features(tables.schema), epochs=1, seed=1)
    repo = tmp_path / "repo"
    shutil.copytree(trained.repo, repo)
    before = _tree(repo)

    def disk_full(*args: object, **kwargs: object) -> dict:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset_export, "tower_extras", disk_full)  # the ranker is written by then
    for target in (repo, tmp_path / "new"):
        with pytest.raises(SetupError, match="No space left"):
            dataset_export.export_trained(target, model, data_set=NAME, data_version=1, seed=1, epochs=1)
    assert _tree(repo) == before  # no ranker v2, traffic unchanged
    assert not (tmp_path / "new").exists()


def test_features_writes_the_training_table_with_the_live_rankers_declaration(trained: Trained,
                                                                               tmp_path: Path) -> None:
    rc, out = _cli(trained.data_dir, "features", NAME, "--out", str(tmp_path / "t.parquet"))
    assert rc == 0 and "ranker/1/features.yaml" in out
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.num_rows == 20_000 and len(table.column("cat")[0]) == 12
    assert set(table.column_names) >= {"user_id", "item_id", "time", "cat", "dense", "label"}


def test_train_refuses_an_unknown_data_set_and_damaged_data(trained: Trained, tmp_path: Path) -> None:
    rc, _ = _cli(trained.data_dir, "train", "nosuch")
    assert rc == 2
    files = trained.files
    schema = load_schema(files["schema"])
    ds = DataSetStore(tmp_path).dataset("broken")
    ds.import_files(schema, files["items"], files["users"], files["impressions"])
    tables = ds.version_dir(1) / "tables.npz"
    tables.chmod(0o644)
    tables.write_bytes(tables.read_bytes()[:-10])
    rc, _ = _cli(tmp_path, "train", "broken")
    assert rc == 4


def test_train_demo_writes_the_demos_repository_only_for_the_data_set_the_build_imported(trained: Trained,
                                                                                        tmp_path: Path) -> None:
    from serving.config import Settings
    from training.dataset_command import _check_demo
    from training.preflight import BUILD_FORMAT

    files = trained.files
    DataSetStore(tmp_path).dataset("demo").import_files(load_schema(files["schema"]), files["items"], files["users"],
                                                       files["impressions"])
    demo_repo = tmp_path / "demo_repository"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RANKSERVE_MODEL_REPOSITORY", str(demo_repo))
        rc, out = _cli(tmp_path, "train", "demo")  # no build imported it
        assert rc == 2 and not demo_repo.exists()
        (tmp_path / "data").mkdir()
        summary = {"format": BUILD_FORMAT, "seed": 0, "config": {}, "quality": {}, "versions": {}}
        (tmp_path / "data" / "build.json").write_text(json.dumps({**summary, "data_set_version": 2}))
        rc, out = _cli(tmp_path, "train", "demo")  # the build imported another version
        assert rc == 2 and not demo_repo.exists()
    (tmp_path / "data" / "build.json").write_text(json.dumps({**summary, "data_set_version": 1}))
    _check_demo(Settings.model_validate({"data_dir": tmp_path, "model_repository": demo_repo}),
                DataSetStore(tmp_path).dataset("demo"), 1)
