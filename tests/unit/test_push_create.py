"""New rankers pushed without code (``rankserve push NAME ARTIFACT --create``): a folder of a
TorchScript ``model.pt`` (or an ONNX ``model.onnx``) and its ``features.yaml`` is checked on real
rows of a small imported data set and written as a new model; each bad artifact is refused naming its reason with nothing
written; further versions canary, promote and roll back as the demo's do; two created rankers of
different declarations serve side by side (run in-process with TorchScript, as Triton would)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.config import Settings
from serving.data.store import DataSetStore
from serving.errors import PushRefusedError, ScenarioRefusedError
from serving.pipeline.assemble import create_pipeline, load_tables
from serving.pipeline.crossing import CrossingStage, version_plan
from serving.repository.push import promote, push, rollback
from serving.repository.registry import ModelRegistry
from serving.repository.scenarios import ScenarioStore
from serving.schemas import RankRequest
from serving.triton.config import read_config
from serving.triton.inprocess import InProcessClient
from tests.unit.test_dataset_training import _cli
from tests.unit.test_serve_dataset import _import
from training.synthetic import write_marketplace

NAME = "shop"
WIDE = """\
cat: [user.region, item.department, "cross(user.tier, item.seller, buckets=101)"]
dense: [item.list_price, item.review_score]
"""
NARROW = """\
cat: [item.color, context.device]
dense: [user.tenure_days]
"""


PICKS = """
name: picks
sources:
  - kind: popular
    count: 50
ranker: side_b
limits: {default_k: 5, max_k: 10, max_candidates: 50}
"""


class Tiny(torch.nn.Module):
    """A ranker of ``n_dense`` dense inputs: a sigmoid of a linear score (``flat``: of shape [B]);
    ``scale`` 100 without the sigmoid gives scores far outside [0, 1], NaN ones NaN."""

    def __init__(self, n_dense: int, seed: int, *, flat: bool = False, squash: bool = True,
                 scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(n_dense, 1)
        self.flat, self.squash, self.scale = flat, squash, scale

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        z = (self.lin(dense) + 0.01 * (cat % 7).float().sum(dim=1, keepdim=True)) * self.scale
        out = torch.sigmoid(z) if self.squash else z
        return out.reshape(-1) if self.flat else out


def _artifact(root: Path, name: str, features: str, module: torch.nn.Module) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "features.yaml").write_text(features)
    torch.jit.script(module).save(str(path / "model.pt"))
    return path


@dataclass(frozen=True)
class Created:
    root: Path
    settings: Settings


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> Created:
    root = tmp_path_factory.mktemp("create")
    files = write_marketplace(root / "files", n_items=300, n_users=150, n_impressions=4_000, seed=2)
    _import(root / "data", files, NAME)
    rc, out = _cli(root / "data", "train", NAME, "--epochs", "1", "--seed", "0", "--json")
    assert rc == 0, out
    return Created(root, Settings(data_dir=root / "data").for_data(NAME).model_copy(update={"cross_backend": "numpy"}))


class _Loader:
    def load_model(self, name: str, config: str | None = None) -> None:
        pass

    def model_ready(self, name: str, version: str = "") -> bool:
        return True


def _push(created: Created, model: str, artifact: Path, **kw: object) -> object:
    settings = created.settings
    return push(ModelRegistry(settings.model_repository), model, artifact, load_tables(settings), _Loader(),
                impressions=DataSetStore.of(settings).dataset(NAME).impressions(), data_set=NAME,
                nodes_timeout_s=1.0, **kw)  # type: ignore[arg-type]


def _tree(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if ".push.lock" not in p.name)


@pytest.mark.parametrize(("case", "features", "module", "model", "create", "reason"), [
    ("unknown", "cat: [item.nope]\ndense: [item.list_price]\n", Tiny(1, 0), "newr", True, "nope"),
    ("width", WIDE, Tiny(5, 0), "newr", True, "declared widths (cat 3, dense 2)"),
    ("nan", WIDE, Tiny(2, 0, scale=float("nan")), "newr", True, "NaN"),
    ("range", WIDE, Tiny(2, 0, squash=False, scale=100.0), "newr", True, "out of [0, 1]"),
    ("exists", WIDE, Tiny(2, 0), "ranker", True, "already exists"),
    ("missing", WIDE, Tiny(2, 0), "newr", False, "with --create"),
    ("bad name", WIDE, Tiny(2, 0), "../newr", True, "must match"),
    ("other widths", NARROW, Tiny(1, 0), "ranker", False, "differ from ranker's inputs"),
])
def test_a_bad_artifact_is_refused_naming_the_reason_and_nothing_is_written(
        created: Created, tmp_path: Path, case: str, features: str, module: torch.nn.Module, model: str,
        create: bool, reason: str) -> None:
    repo = created.settings.model_repository
    before = _tree(repo)
    with pytest.raises(PushRefusedError) as err:
        _push(created, model, _artifact(tmp_path, "art", features, module), create=create)
    assert reason in str(err.value), (case, str(err.value))
    assert _tree(repo) == before


def test_push_create_writes_a_served_ranker_then_canary_promote_and_rollback_work(created: Created,
                                                                                   tmp_path: Path) -> None:
    settings = created.settings
    registry = ModelRegistry(settings.model_repository)
    result = _push(created, "wide", _artifact(tmp_path, "v1", WIDE, Tiny(2, 1, flat=True)), create=True)
    assert result.version == 1 and registry.traffic("wide").live == 1  # type: ignore[attr-defined]
    v1 = registry.version_dir("wide", 1)
    assert {"model.pt", "model.py", "golden.npz", "meta.json", "features.yaml", "features.json",
            "digests.json"} <= {p.name for p in v1.iterdir()}
    assert [list(t.dims) for t in read_config(settings.model_repository, "wide").input] == [[3], [2]]
    with np.load(v1 / "golden.npz") as golden:
        assert golden["cat"].shape[1:] == (3,) and golden["score"].shape[1:] == (1,)  # [B] served as [B, 1]
        assert np.isfinite(golden["score"]).all() and golden["score"].shape[0] > 100
    assert json.loads((v1 / "meta.json").read_text())["backend"] == "torchscript"
    _push(created, "wide", _artifact(tmp_path, "v2", WIDE, Tiny(2, 2)), canary_percent=10.0)
    assert registry.traffic("wide").canary_version == 2
    assert promote(registry, "wide").live == 2
    assert rollback(registry, "wide").live == 1


def test_two_created_rankers_of_different_declarations_serve_side_by_side(created: Created, tmp_path: Path) -> None:
    settings = created.settings
    for name, features, module in (("side_a", WIDE, Tiny(2, 3)), ("side_b", NARROW, Tiny(1, 4))):
        _push(created, name, _artifact(tmp_path, name, features, module), create=True)
    registry = ModelRegistry(settings.model_repository)
    pipeline = create_pipeline(settings, InProcessClient(settings.model_repository), registry)
    tables = pipeline.catalogue.tables
    user, cands = str(tables.user_ids[0]), [str(i) for i in tables.item_ids[:30]]
    crossing = CrossingStage(tables, "numpy")
    for name in ("side_a", "side_b"):
        req = RankRequest.model_validate({"user_id": user, "candidates": cands, "k": 30, "model": name})
        out, _ = asyncio.run(pipeline.run_batch([pipeline.prepare(req)]))
        assert not isinstance(out[0], Exception), out[0]
        assert out[0].model_name == name
        # each ranker's scores are its own model on its own declaration's features
        rows = np.arange(30)  # the candidates are the first 30 items
        plan = version_plan(tables, registry.version_dir(name, 1), None)
        feats = crossing.inputs(tables, plan, np.array([0]), [tables.encode_context(None)], np.zeros(30, np.int64),
                                rows).tensors()
        module = torch.jit.load(str(registry.version_dir(name, 1) / "model.pt"))
        want = module(torch.from_numpy(feats["cat"]), torch.from_numpy(feats["dense"])).detach().numpy().reshape(-1)
        got = {it.item_id: it.score for it in out[0].items}
        np.testing.assert_allclose([got[c] for c in cands], want, rtol=1e-5, atol=1e-6)
    # a scenario names a created ranker; an unknown one is refused naming the ranking models
    store = ScenarioStore(settings.model_repository)
    groups = pipeline.catalogue.group_counts()
    with pytest.raises(ScenarioRefusedError, match="side_a"):
        store.check(PICKS.replace("side_b", "nothing"), settings, registry, groups)
    pipeline.set_scenarios({"picks": store.check(PICKS, settings, registry, groups)})
    (answer,), _ = asyncio.run(pipeline.run_batch([pipeline.prepare(RankRequest(user_id=user, scenario="picks"))]))
    assert not isinstance(answer, Exception), answer
    assert answer.model_name == "side_b" and len(answer.items) == 5


def _onnx_ranker(path: Path, n_cat: int, n_dense: int, *, flat: bool = False) -> Path:
    """A tiny ONNX ranker: sigmoid(dense @ w + 0.01 * sum(cat)), [B, 1] (``flat``: [B])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.linspace(-1, 1, n_dense, dtype=np.float32).reshape(n_dense, 1), "w")
    scale = numpy_helper.from_array(np.full((1, 1), 0.01, np.float32), "scale")
    shape = numpy_helper.from_array(np.array([-1], np.int64), "flat_shape")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("MatMul", ["dense", "w"], ["lin"]),
             helper.make_node("Cast", ["cat"], ["catf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["catf", "axes"], ["cats"], keepdims=1),
             helper.make_node("Mul", ["cats", "scale"], ["catz"]),
             helper.make_node("Add", ["lin", "catz"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["col" if flat else "score"])]
    if flat:
        nodes.append(helper.make_node("Reshape", ["col", "flat_shape"], ["score"]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("cat", TensorProto.INT64, ["B", n_cat]),
                        helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["B", n_dense])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["B"] if flat else ["B", 1])],
        [w, scale, axes, *([shape] if flat else [])])
    path.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path / "model.onnx"))
    return path


def test_an_onnx_ranker_is_created_checked_and_served_in_process(created: Created, tmp_path: Path) -> None:
    settings = created.settings
    registry = ModelRegistry(settings.model_repository)
    wrong = _onnx_ranker(tmp_path / "wrong", 3, 5)
    (wrong / "features.yaml").write_text(WIDE)
    before = _tree(settings.model_repository)
    with pytest.raises(PushRefusedError, match=r"declared widths \(cat 3, dense 2\) differ from model.onnx"):
        _push(created, "onnx_r", wrong, create=True)
    assert _tree(settings.model_repository) == before
    art = _onnx_ranker(tmp_path / "good", 3, 2, flat=True)
    (art / "features.yaml").write_text(WIDE)
    assert _push(created, "onnx_r", art, create=True).version == 1  # type: ignore[attr-defined]
    v1 = registry.version_dir("onnx_r", 1)
    assert (v1 / "model.onnx").is_file() and not (v1 / "model.pt").exists()
    assert json.loads((v1 / "meta.json").read_text())["backend"] == "onnx"
    with np.load(v1 / "golden.npz") as golden:
        got = InProcessClient(settings.model_repository).infer_sync(
            "onnx_r", {"cat": golden["cat"], "dense": golden["dense"]}, ["score"], version="1")["score"]
        want = 1 / (1 + np.exp(-(golden["dense"] @ np.linspace(-1, 1, 2, dtype=np.float32)
                                 + 0.01 * golden["cat"].sum(axis=1))))
        np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-4, atol=1e-5)
        assert golden["score"].shape[1:] == (1,)


def test_the_cli_creates_a_ranker_once_and_refuses_a_new_name_without_create(created: Created, tmp_path: Path) -> None:
    data = created.settings.data_dir
    art = _artifact(tmp_path, "cli", NARROW, Tiny(1, 5))
    rc, out = _cli(data, "push", "cli_r", str(art), "--data", NAME, "--create")
    assert rc == 0, out
    shown = json.loads(out)
    assert shown["version"] == 1 and shown["traffic"]["live"] == 1 and shown["checks"]["rows_checked"] > 100
    assert _cli(data, "push", "cli_r", str(art), "--data", NAME, "--create")[0] == 3  # exists
    assert _cli(data, "push", "cli_new", str(art), "--data", NAME)[0] == 3  # missing without --create
    rc, out = _cli(data, "models", "--data", NAME, "--json")
    assert rc == 0 and {(r["model"], r["backend"]) for r in json.loads(out)} >= {("cli_r", "torchscript")}


def test_a_full_artifact_with_features_yaml_keeps_its_declaration_in_the_version(created: Created,
                                                                                tmp_path: Path) -> None:
    """A ranker folder with golden rows beside its ``features.yaml`` (a version as pushed or
    trained, pushed again) is validated on its declaration and served with it: the version holds it."""
    settings = created.settings
    registry = ModelRegistry(settings.model_repository)
    _push(created, "again", _artifact(tmp_path, "v1", NARROW, Tiny(1, 6)), create=True)
    v1 = registry.version_dir("again", 1)
    assert (v1 / "golden.npz").is_file()
    result = _push(created, "again", v1)
    v2 = registry.version_dir("again", result.version)  # type: ignore[attr-defined]
    assert (v2 / "features.yaml").read_text() == NARROW
    assert json.loads((v2 / "features.json").read_text()) == json.loads((v1 / "features.json").read_text())
    tables = load_tables(settings)
    assert version_plan(tables, v2, None) == version_plan(tables, v1, None)
