"""config.pbtxt generation from the protobuf message, and atomic version export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.repository.export import export_version, load_golden
from serving.repository.registry import ModelRegistry
from serving.triton.config import (
    RUNNER,
    TORCH_THREADS_PARAMETER,
    TensorSpec,
    apply_instance_settings,
    model_config,
    read_config,
    resolve_kind,
    write_config,
)
from serving.triton.digests import refresh_runners

IN = [TensorSpec("cat", "INT64", (3,)), TensorSpec("dense", "FP32", (4,))]
OUT = [TensorSpec("score", "FP32", (1,))]


class _M(torch.nn.Module):
    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(dense.sum(1, keepdim=True) + cat.sum(1, keepdim=True).float())


@pytest.mark.parametrize(("kind", "want"), [("cpu", "KIND_CPU"), ("gpu", "KIND_GPU")])
def test_config_fields(kind: str, want: str) -> None:
    cfg = model_config("ranker", IN, OUT, max_batch_size=512, kind=kind, preferred_batch_sizes=(64,))
    back = text_format.Parse(text_format.MessageToString(cfg), model_config_pb2.ModelConfig())
    assert back.name == "ranker" and back.backend == "python" and back.max_batch_size == 512
    assert [(t.name, list(t.dims)) for t in back.input] == [("cat", [3]), ("dense", [4])]
    assert model_config_pb2.DataType.Name(back.input[0].data_type) == "TYPE_INT64"
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(back.instance_group[0].kind) == want
    assert back.HasField("dynamic_batching") and list(back.dynamic_batching.preferred_batch_size) == [64]
    assert back.version_policy.HasField("all")
    # warm-up on zeros at batch 1 and 512 (capped at max_batch_size), every input described
    assert [(w.batch_size, w.count) for w in back.model_warmup] == [(1, 2), (512, 2)]
    for w in back.model_warmup:
        assert {name: (list(t.dims), t.zero_data) for name, t in w.inputs.items()} == \
            {"cat": ([3], True), "dense": ([4], True)}
    small = model_config("m", IN, OUT, max_batch_size=64, kind=kind)
    assert [w.batch_size for w in small.model_warmup] == [1, 64]


def test_auto_kind_follows_the_gpu_torch_sees() -> None:
    assert resolve_kind("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
    assert (resolve_kind("cpu"), resolve_kind("gpu")) == ("cpu", "gpu")
    with pytest.raises(ValueError, match="kind"):
        resolve_kind("tpu")


def test_instance_kind_and_threads_are_decided_where_triton_starts(tmp_path: Path) -> None:
    """Start-up rewrites each model's instance groups to the setting's kind and its torch threads
    parameter (what the python-backend model reads), and leaves an up-to-date config alone."""
    for name in ("ranker", "user_tower"):
        write_config(tmp_path, model_config(name, IN, OUT, max_batch_size=64, kind="cpu"))
    kinds = model_config_pb2.ModelInstanceGroup
    assert apply_instance_settings(tmp_path, ["ranker", "user_tower"], kind="gpu", torch_threads=3) == \
        ["ranker", "user_tower"]
    for name in ("ranker", "user_tower"):
        cfg = read_config(tmp_path, name)
        assert [g.kind for g in cfg.instance_group] == [kinds.KIND_GPU]
        assert cfg.parameters[TORCH_THREADS_PARAMETER].string_value == "3"
        assert cfg.max_batch_size == 64 and [t.name for t in cfg.input] == ["cat", "dense"]
    mtime = (tmp_path / "ranker" / "config.pbtxt").stat().st_mtime_ns
    assert apply_instance_settings(tmp_path, ["ranker"], kind="gpu", torch_threads=3) == []
    assert (tmp_path / "ranker" / "config.pbtxt").stat().st_mtime_ns == mtime
    assert apply_instance_settings(tmp_path, ["ranker"], kind="cpu", torch_threads=1) == ["ranker"]
    assert [g.kind for g in read_config(tmp_path, "ranker").instance_group] == [kinds.KIND_CPU]


def test_start_up_gives_old_runner_copies_this_runner_and_leaves_a_model_s_own_code(tmp_path: Path) -> None:
    """A repository built by an earlier rankserve carries that version's runner in each version
    (one read inputs with as_numpy(), wrong under NumPy 2): start-up replaces those copies, and
    only those."""
    runner = RUNNER.read_text()
    old = runner.replace("from_dlpack(t.to_dlpack())", "torch.from_numpy(t.as_numpy())")
    assert old != runner
    for model, version, text in (("ranker", "1", old), ("ranker", "2", runner), ("user_tower", "1", old),
                                 ("custom", "1", "# a python model of the team's own\n")):
        (tmp_path / model / version).mkdir(parents=True)
        (tmp_path / model / version / "model.py").write_text(text)
    assert refresh_runners(tmp_path, ["ranker", "user_tower", "custom"]) == ["ranker/1", "user_tower/1"]
    assert all((tmp_path / m / v / "model.py").read_text() == runner
               for m, v in (("ranker", "1"), ("ranker", "2"), ("user_tower", "1")))
    assert (tmp_path / "custom" / "1" / "model.py").read_text().startswith("# a python model")
    assert refresh_runners(tmp_path, ["ranker", "user_tower", "custom"]) == []
    assert not list(tmp_path.rglob(".model.py.tmp"))


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        model_config("m", IN, OUT, max_batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        TensorSpec("x", "FLOAT", (1,))


def test_export_is_atomic_numbered_and_golden(tmp_path: Path) -> None:
    m = torch.jit.script(_M())
    g = {"cat": np.ones((5, 3), np.int64), "dense": np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)}
    assert export_version(tmp_path, "ranker", m, IN, OUT, g, {"note": "a"}, max_batch_size=64) == 1
    assert export_version(tmp_path, "ranker", m, IN, OUT, g, {}, max_batch_size=64) == 2
    with pytest.raises(FileExistsError):
        export_version(tmp_path, "ranker", m, IN, OUT, g, {}, max_batch_size=64, version=2)
    assert ModelRegistry(tmp_path).versions("ranker") == [1, 2]
    assert not [p for p in (tmp_path / "ranker").iterdir() if p.name.startswith(".tmp")]
    v1 = tmp_path / "ranker" / "1"
    assert {p.name for p in v1.iterdir()} == {"model.pt", "model.py", "golden.npz", "meta.json", "digests.json"}
    golden = load_golden(v1)
    with torch.inference_mode():
        want = m(torch.from_numpy(g["cat"]), torch.from_numpy(g["dense"])).numpy()
    np.testing.assert_array_equal(golden["score"], want)
    assert read_config(tmp_path, "ranker").max_batch_size == 64
    with pytest.raises(ValueError, match="golden input"):
        export_version(tmp_path, "ranker", m, IN, OUT, {**g, "cat": g["cat"].astype(np.int32)}, {},
                       max_batch_size=64)
