"""The worked example ``examples/own_ranker/`` run as its README runs it, on the second marketplace:
``rankserve features`` with the example's declaration, ``train.py`` (a TorchScript and an ONNX
export), both pushed with ``--create``, a scenario ranking with each (``ranker: NAME``), and
``rankserve serve --data shop`` (real Triton, real Ray Serve). The served scores are each model's
own output on the same rows of the features table, within 1e-5."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.integration.marketplace import NAME, ROOT, Marketplace, Served, cli, serving

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "own_ranker"
RANKERS = {"my_ranker": "torchscript", "my_ranker_onnx": "onnx"}  # pushed name -> the artifact folder
SCENARIOS = {"my_ranker": "mine", "my_ranker_onnx": "mine_onnx"}


@dataclass(frozen=True)
class Example:
    served: Served
    table: Path  # what rankserve features wrote
    artifacts: Path  # what train.py wrote


def _ok(result: tuple[int, str]) -> str:
    rc, out = result
    assert rc == 0, out
    return out


@pytest.fixture(scope="module")
def example(marketplace: Marketplace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    root = tmp_path_factory.mktemp("own-ranker")
    data, table, artifacts = marketplace.copy(root / "data"), root / "features.parquet", root / "artifacts"
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
    with serving(data, marketplace.files, root / "serve.log") as srv:
        yield Example(srv, table, artifacts)


def _requests(table: Path, impressions: Path, n: int) -> list[dict]:
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
    for req in _requests(example.table, example.served.files["impressions"], 20):
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
