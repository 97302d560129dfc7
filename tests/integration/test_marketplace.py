"""A second marketplace end to end, as a team brings its own: its files (string ids, no content
vector, groups ``seller`` and ``department``, a request context of ``device`` and ``recent`` items)
imported with ``rankserve data import``, its default models trained with ``rankserve train``, and
``rankserve serve --data shop`` answering over HTTP and gRPC in the schema's ids. The served scores
agree with the true click probability the files were drawn from; the context changes the ranking;
bad ids and context fields are refused naming them; catalogue changes take the schema's ids and
columns; the demo's files are never touched.

The same server also runs the worked example ``examples/own_ranker/`` as its README runs it:
``rankserve features`` with the example's declaration, ``train.py`` (a TorchScript and an ONNX
export), both pushed with ``--create``, a scenario ranking with each (``ranker: NAME``). The served
scores are each model's own output on the same rows of the features table, within 1e-5.

One server for the module (real Triton, real Ray Serve), stopped with Ctrl-C."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.proto import ranker_pb2, ranker_pb2_grpc
from tests.integration.marketplace import NAME, ROOT, SEED, Marketplace, Served, cli, serving
from tests.waiting import metric, wait_for
from training.synthetic import click_probability

pytestmark = pytest.mark.integration


EXAMPLE = ROOT / "examples" / "own_ranker"
RANKERS = {"my_ranker": "torchscript", "my_ranker_onnx": "onnx"}  # pushed name -> the artifact folder
SCENARIOS = {"my_ranker": "mine", "my_ranker_onnx": "mine_onnx"}


@dataclass(frozen=True)
class Example:
    served: Served
    table: Path  # what rankserve features wrote
    artifacts: Path  # what the example's train.py wrote


def _ok(result: tuple[int, str]) -> str:
    rc, out = result
    assert rc == 0, out
    return out


def _own_rankers(data: Path, root: Path) -> tuple[Path, Path]:
    """The example's README steps on the data dir ``data``: its features table and its artifacts."""
    table, artifacts = root / "features.parquet", root / "artifacts"
    _ok(cli(data, "features", NAME, "--ranker-features", str(EXAMPLE / "features.yaml"), "--out", str(table)))
    trained = subprocess.run([sys.executable, str(EXAMPLE / "train.py"), str(table), "--out", str(artifacts)],
                             cwd=root, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    for name, folder in RANKERS.items():
        _ok(cli(data, "push", name, str(artifacts / folder), "--data", NAME, "--create"))
    _ok(cli(data, "scenarios", "apply", str(EXAMPLE / "scenario.yaml"), "--data", NAME))
    onnx = root / "mine_onnx.yaml"  # the README's "a copy naming it"
    onnx.write_text((EXAMPLE / "scenario.yaml").read_text().replace("name: mine", "name: mine_onnx")
                    .replace("ranker: my_ranker", "ranker: my_ranker_onnx"))
    _ok(cli(data, "scenarios", "apply", str(onnx), "--data", NAME))
    return table, artifacts


@pytest.fixture(scope="module")
def example(marketplace: Marketplace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    root = tmp_path_factory.mktemp("marketplace-served")
    data = marketplace.copy(root / "data")
    table, artifacts = _own_rankers(data, root)
    with serving(data, marketplace.files, root / "serve.log") as srv:
        yield Example(srv, table, artifacts)


@pytest.fixture(scope="module")
def served(example: Example) -> Served:
    return example.served


def _requests(srv: Served, n: int) -> list[dict]:
    """``n`` of the log's requests (a user, a device, recent items, the items shown) to rank again."""
    imp = pq.read_table(srv.files["impressions"])
    rows = imp.slice(imp.num_rows - n * 10).to_pylist()  # the latest requests: ten impressions each
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["customer"], r["shown_at"], r["device"])
        req = out.setdefault(key, {"user": r["customer"], "device": r["device"], "recent": r["recent"], "items": []})
        req["items"].append(r["sku"])
    return list(out.values())[:n]


def _agreement(truth: np.ndarray, scores: np.ndarray) -> tuple[int, int]:
    """Item pairs of one request that ``scores`` orders as ``truth`` does, of pairs truth orders."""
    i, j = np.triu_indices(truth.size, 1)
    differ = truth[i] != truth[j]
    same = np.sign(truth[i] - truth[j]) == np.sign(scores[i] - scores[j])
    return int((same & differ).sum()), int(differ.sum())


def test_served_scores_agree_with_the_true_click_probability(served: Served) -> None:
    items, users = pq.read_table(served.files["items"]), pq.read_table(served.files["users"])
    agree = pairs = 0
    for req in _requests(served, 40):
        r = served.rank({"user_id": req["user"], "candidates": req["items"], "k": len(req["items"]),
                         "context": {"device": req["device"], "recent": req["recent"]}})
        assert r.status_code == 200, r.text
        got = {it["item_id"]: it["score"] for it in r.json()["items"]}
        assert set(got) == set(req["items"]), "every given candidate is known and ranked"
        ids = list(got)
        truth = click_probability(items, users, [req["user"]] * len(ids), ids, [req["device"]] * len(ids),
                                  [req["recent"]] * len(ids), seed=SEED)
        a, p = _agreement(truth, np.array([got[i] for i in ids]))
        agree, pairs = agree + a, pairs + p
    print(f"served scores order {agree / pairs:.3f} of {pairs} item pairs as the true click probability does")
    assert pairs > 500 and agree / pairs >= 0.6, f"served scores order {agree} of {pairs} pairs as the truth does"


def test_answers_carry_the_schemas_string_ids(served: Served) -> None:
    r = served.rank({"user_id": "cust-0007", "k": 10, "exclude": ["sku-000001"]})
    assert r.status_code == 200, r.text
    ids = [it["item_id"] for it in r.json()["items"]]
    assert len(ids) == 10 and all(isinstance(i, str) and i.startswith("sku-") for i in ids)
    assert "sku-000001" not in ids and "cold_start" not in r.json()
    cold = served.rank({"user_id": "somebody-new", "k": 5})
    assert cold.status_code == 200 and cold.json()["cold_start"] is True and len(cold.json()["items"]) == 5


def test_unknown_candidates_are_dropped_and_counted(served: Served) -> None:
    r = served.rank({"user_id": "cust-0001", "candidates": ["sku-000010", "no-such-sku", "sku-000011", "nope"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {it["item_id"] for it in body["items"]} == {"sku-000010", "sku-000011"}
    assert body["unknown_candidates"] == 2


def test_the_context_changes_the_ranking(served: Served) -> None:
    """The recent items reach the user tower (the mean of their embeddings): what the home feed
    recalls follows them. The device reaches the ranker (crossed with the item groups): the same
    candidates score differently on another device."""
    items = pq.read_table(served.files["items"])
    dept = np.array(items.column("department").to_pylist())
    skus = np.array(items.column("sku").to_pylist())
    tops = []
    for d in ("books", "garden"):
        recent = skus[dept == d][:8].tolist()
        r = served.rank({"user_id": "cust-0003", "k": 20, "context": {"device": "ios", "recent": recent}})
        assert r.status_code == 200, r.text
        tops.append([it["item_id"] for it in r.json()["items"]])
    assert tops[0] != tops[1], "recently viewed books or garden items gave the same answer"
    scores = []
    for device in ("ios", "web"):
        r = served.rank({"user_id": "cust-0003", "candidates": skus[:30].tolist(), "k": 30, "context": {"device": device}})
        assert r.status_code == 200, r.text
        scores.append({it["item_id"]: it["score"] for it in r.json()["items"]})
    assert scores[0].keys() == scores[1].keys() and scores[0] != scores[1], "the device changed no score"


@pytest.mark.parametrize(("body", "field"), [
    ({"user_id": 7}, "user_id"),
    ({"user_id": "cust-0001", "candidates": ["sku-000001", 2]}, "candidates[1]"),
    ({"user_id": "cust-0001", "context": {"weather": "rain"}}, "context.weather"),
    ({"user_id": "cust-0001", "context": {"device": 3}}, "context.device"),
    ({"user_id": "cust-0001", "context": {"recent": "sku-000001"}}, "context.recent"),
])
def test_a_wrong_id_type_or_context_field_is_refused_naming_it(served: Served, body: dict, field: str) -> None:
    r = served.rank(body)
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["field"] == field, r.text


def test_scenarios_restrict_and_diversify_by_the_schemas_groups(served: Served) -> None:
    items = pq.read_table(served.files["items"])
    seller = dict(zip(items.column("sku").to_pylist(), items.column("seller").to_pylist(), strict=True))
    one = items.column("seller")[0].as_py()
    r = served.rank({"user_id": "cust-0002", "k": 10, "context": {"seller": one}, "scenario": "home"})
    assert r.status_code == 200, r.text
    r = served.rank({"user_id": "cust-0002", "k": 10, "scenario": "similar", "item_id": "sku-000004"})
    assert r.status_code == 200, r.text
    assert "sku-000004" not in [it["item_id"] for it in r.json()["items"]]
    assert all(i in seller for i in (it["item_id"] for it in r.json()["items"]))


def test_grpc_speaks_the_schemas_string_ids(served: Served) -> None:
    with grpc.insecure_channel(served.grpc_target) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        res = stub.Rank(ranker_pb2.RankRequest(user_id_str="cust-0007", k=5, exclude_str=["sku-000001"],
                                               context_json=json.dumps({"device": "web"})), timeout=10)
        given = stub.Rank(ranker_pb2.RankRequest(user_id_str="cust-0007", candidates_str=["sku-000002", "none"]),
                          timeout=10)
    ids = [it.item_id_str for it in res.items]
    assert len(ids) == 5 and all(i.startswith("sku-") for i in ids) and "sku-000001" not in ids
    assert [it.item_id_str for it in given.items] == ["sku-000002"] and given.unknown_candidates == 1


def test_catalogue_changes_take_the_schemas_ids_and_columns(served: Served, tmp_path: Path) -> None:
    new = tmp_path / "new.csv"
    pq.write_table(pa.table({"sku": ["sku-new-1"], "seller": ["seller-000"], "department": ["books"],
                             "color": ["red"], "list_price": [12.5], "review_score": [4.5], "orders_30d": [3]}),
                   tmp_path / "new.parquet")
    new.write_text("sku,seller,department,color,list_price,review_score,orders_30d\n"
                   "sku-new-2,seller-001,toys,blue,8.0,,1\n")
    for path in (tmp_path / "new.parquet", new):
        rc, out = cli(served.data_dir, "items", "add", str(path), "--data", NAME)
        assert rc == 0, out

    def ranked() -> bool:
        r = served.rank({"user_id": "cust-0001", "candidates": ["sku-new-1", "sku-new-2", "sku-000001"]})
        return r.status_code == 200 and r.json().get("unknown_candidates", 0) == 0

    wait_for(ranked, "the added items are ranked as candidates", timeout_s=30)
    rc, out = cli(served.data_dir, "items", "block", "sku-new-1", "--data", NAME)
    assert rc == 0, out
    wait_for(lambda: "sku-new-1" not in {it["item_id"] for it in served.rank(
        {"user_id": "cust-0001", "candidates": ["sku-new-1", "sku-000001"]}).json()["items"]},
             "a blocked item is never returned", timeout_s=30)


def test_capacity_loads_the_served_data_set_with_its_own_requests(served: Served, tmp_path: Path) -> None:
    """``rankserve capacity --url URL --data shop``: requests in the schema's ids, with the contexts
    of its impressions, all answered; the server counts them as answered by the default scenario."""
    before = metric(served.url, "rankserve_requests_total", status="200", scenario="home")
    rc, out = cli(served.data_dir, "capacity", "--url", served.url, "--data", NAME, "--start-rps", "15",
                  "--max-rps", "15", "--step-s", "2", "--refine", "0", "--out", str(tmp_path))
    assert rc == 0, out
    (step,) = json.loads((tmp_path / "capacity.json").read_text())["steps"]
    assert step["requests"] > 0 and step["failures"] == 0, step
    answered = metric(served.url, "rankserve_requests_total", status="200", scenario="home") - before
    assert answered >= step["requests"], (answered, step)  # its 2 s warm-up is answered too
    assert f"serving the data set {NAME}" in out


def test_the_demos_files_are_not_touched(served: Served) -> None:
    assert not (served.data_dir / "build.json").exists()
    assert sorted(p.name for p in (served.data_dir / "datasets").iterdir()) == [NAME]
    assert json.loads((served.data_dir / "datasets" / NAME / "model_repository" / "ranker" / "traffic.json")
                      .read_text())


def _table_requests(table: Path, impressions: Path, n: int) -> list[dict]:
    """The last ``n`` requests of the features table (a user at one time: the items shown, their
    rows' ``cat`` and ``dense``) with the context each was shown in, from the imported files."""
    rows = pq.read_table(table).to_pylist()
    context = {(r["customer"], r["shown_at"]): {"device": r["device"], "recent": r["recent"]}
               for r in pq.read_table(impressions, columns=["customer", "shown_at", "device", "recent"]).to_pylist()}
    out: dict[tuple, dict] = {}
    for r in rows[-n * 10:]:
        key = (r["user_id"], r["time"])
        req = out.setdefault(key, {"user_id": r["user_id"], "context": context[key], "items": [], "cat": [],
                                   "dense": []})
        for field, value in (("items", r["item_id"]), ("cat", r["cat"]), ("dense", r["dense"])):
            req[field].append(value)
    return list(out.values())[-n:]


def _own_scores(artifact: Path, cat: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """The exported model's own output on these rows: TorchScript with torch, ONNX with onnxruntime."""
    if (artifact / "model.onnx").is_file():
        import onnxruntime as ort

        session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
        return session.run(["score"], {"cat": cat, "dense": dense})[0].reshape(-1)
    import torch

    module = torch.jit.load(str(artifact / "model.pt"))
    with torch.inference_mode():
        return module(torch.from_numpy(cat), torch.from_numpy(dense)).numpy().reshape(-1)


@pytest.mark.parametrize("ranker", list(RANKERS))
def test_served_scores_are_the_models_own_output_on_the_same_rows(example: Example, ranker: str) -> None:
    artifact = example.artifacts / RANKERS[ranker]
    checked = 0
    for req in _table_requests(example.table, example.served.files["impressions"], 20):
        r = example.served.rank({"user_id": req["user_id"], "candidates": req["items"], "k": len(req["items"]),
                                 "context": req["context"], "scenario": SCENARIOS[ranker]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"]["name"] == ranker and body["scenario"] == SCENARIOS[ranker]
        served = {it["item_id"]: it["score"] for it in body["items"]}
        assert set(served) == set(req["items"]), "every shown item is ranked"
        want = _own_scores(artifact, np.array(req["cat"], np.int64), np.array(req["dense"], np.float32))
        np.testing.assert_allclose([served[i] for i in req["items"]], want, rtol=0, atol=1e-5,
                                   err_msg=f"{ranker} for {req['user_id']} in {req['context']}")
        checked += len(want)
    assert checked >= 150, f"only {checked} rows compared"


def test_each_version_holds_its_declaration_and_names_its_backend(example: Example) -> None:
    rc, out = cli(example.served.data_dir, "models", "--data", NAME, "--json")
    assert rc == 0, out
    backends = {row["model"]: row["backend"] for row in json.loads(out)}
    assert backends["my_ranker"] == "torchscript" and backends["my_ranker_onnx"] == "onnx"
    repo = example.served.data_dir / "datasets" / NAME / "model_repository"
    for name in RANKERS:
        assert (repo / name / "1" / "features.yaml").read_text() == (EXAMPLE / "features.yaml").read_text()
