"""The embedded Triton from the wheel: every model in the repository answers its golden inputs;
dynamic batching returns each request its own rows; bad input fails alone; clean start and stop."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.errors import BackendUnavailableError, TritonError
from serving.net import free_port
from serving.repository.export import export_version, load_golden
from serving.triton.client import TritonClient
from serving.triton.config import TensorSpec, read_config
from serving.triton.process import TritonProcess, TritonStartError
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_every_model_and_version_matches_its_golden_outputs(triton: TritonProcess) -> None:
    client = TritonClient(triton.grpc_url, triton.key)
    checked = 0
    for name in triton.models:
        cfg = read_config(triton.repo, name)
        for v in client.ready_versions(name):  # what Triton holds (retention keeps the rest on disk)
            golden = load_golden(triton.repo / name / str(v))
            inputs = {t.name: golden[t.name] for t in cfg.input}
            out = client.infer(name, inputs, [o.name for o in cfg.output], version=str(v))
            for o in cfg.output:
                assert out[o.name].shape == golden[o.name].shape and out[o.name].size > 0
                np.testing.assert_allclose(out[o.name], golden[o.name], rtol=1e-4, atol=1e-5)
                checked += 1
    assert checked >= 2


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + ids.float()


def test_own_server_batches_and_isolates_bad_requests(tmp_path: Path) -> None:
    module = torch.jit.script(_Tiny())
    rng = np.random.default_rng(0)
    golden = {"ids": rng.integers(0, 5, (4, 1)), "x": rng.normal(size=(4, 4)).astype(np.float32)}
    export_version(tmp_path / "repo", "tiny", module, [TensorSpec("ids", "INT64", (1,)), TensorSpec("x", "FP32", (4,))],
                   [TensorSpec("y", "FP32", (2,))], golden, {}, max_batch_size=128)
    with TritonProcess(tmp_path / "repo", runtime_dir=tmp_path / "rt") as server:
        client = TritonClient(server.grpc_url)
        for n in (1, 3, 64):
            ids = rng.integers(0, 5, (n, 1))
            x = rng.normal(size=(n, 4)).astype(np.float32)
            got = client.infer("tiny", {"ids": ids, "x": x}, ["y"])["y"]
            with torch.inference_mode():
                want = module(torch.from_numpy(ids), torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-6)
        results: dict[int, np.ndarray] = {}

        def one(i: int) -> None:
            c = TritonClient(server.grpc_url)
            results[i] = c.infer("tiny", {"ids": np.full((i + 1, 1), i, np.int64),
                                          "x": np.zeros((i + 1, 4), np.float32)}, ["y"])["y"]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bias = module.lin.bias.detach().numpy()
        for i, y in results.items():
            assert y.shape == (i + 1, 2)
            np.testing.assert_allclose(y, np.tile(bias + i, (i + 1, 1)), rtol=1e-6)
        with pytest.raises(TritonError, match="data-type"):
            client.infer("tiny", {"ids": np.zeros((2, 1), np.int32), "x": np.zeros((2, 4), np.float32)}, ["y"])
        with pytest.raises(TritonError):
            client.infer("tiny", {"ids": np.zeros((2, 1), np.int64), "x": np.zeros((2, 5), np.float32)}, ["y"])
        assert client.server_ready() and client.model_ready("tiny")
        pid = server._proc.pid if server._proc else -1
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_broken_model_fails_fast_with_tritons_log(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 4\n'
                                                  'input { name: "x" data_type: TYPE_FP32 dims: 1 }\n'
                                                  'output { name: "y" data_type: TYPE_FP32 dims: 1 }\n')
    (repo / "broken" / "1" / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    server = TritonProcess(repo, runtime_dir=tmp_path / "rt", ready_timeout_s=120)
    with pytest.raises(TritonStartError, match="Triton did not start") as info:
        server.start()
    assert not server.alive()
    assert os.path.exists(server.log_path)
    assert "this model cannot load" in (info.value.details or ""), info.value.details  # the log's tail
    assert str(server.log_path) in (info.value.hint or "")


def test_a_stub_that_cannot_load_fails_fast_instead_of_hanging(triton: TritonProcess, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the wheel's libraries the python stub dies at exec and Triton waits in "loading"
    forever (even with --exit-on-error); start() must read that in the log and give up at once."""
    import serving.triton.process as tp

    real_env = tp._child_env

    def env_without_wheel_libs() -> dict[str, str]:
        env = real_env()
        env["LD_LIBRARY_PATH"] = ":".join(p for p in env["LD_LIBRARY_PATH"].split(":")
                                          if "nvidia_pytriton.libs" not in p)
        return env

    monkeypatch.setattr(tp, "_child_env", env_without_wheel_libs)
    server = TritonProcess(triton.repo, runtime_dir=tmp_path / "rt", models=["ranker"], ready_timeout_s=120)
    t0 = time.monotonic()
    with pytest.raises(TritonStartError, match="error while loading shared libraries"):
        server.start()
    assert time.monotonic() - t0 < 60  # a hang bound: a few seconds; hanging in "loading" takes the 120 s
    assert not server.alive()


_STARTER = """
import signal, sys
from pathlib import Path
from serving.triton.process import TritonProcess
server = TritonProcess(Path(sys.argv[1]), runtime_dir=Path(sys.argv[2]), models=["ranker"]).start()
print(server._proc.pid, flush=True)
while True:
    signal.pause()  # until killed
"""


@pytest.mark.slow  # 10 s: a starter SIGKILLed, Triton gone after it (make slow-test)
def test_triton_does_not_outlive_a_killed_starter(triton: TritonProcess, tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up: the parent-death signal still stops the server."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: no parent-death signal for Triton here")
    starter = subprocess.Popen([sys.executable, "-c", _STARTER, str(triton.repo), str(tmp_path / "rt")],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        pid = int(starter.stdout.readline())  # type: ignore[union-attr]
        assert _running(pid)
        starter.kill()
        starter.wait(timeout=10)
        wait_for(lambda: not _running(pid), f"tritonserver {pid} stops after its starter was killed", timeout_s=30)
    finally:
        starter.kill()


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status.lower()


@pytest.mark.slow  # 22 s: Triton down for 10 s, then back (make slow-test)
def test_a_client_reconnects_within_a_second_of_triton_coming_back(tmp_path: Path) -> None:
    """A replica's channel outlives a Triton restart: once Triton is back, answers are no longer
    degraded within a second (gRPC's reconnect back-off could grow to 120 s; measured here with
    grpcio 1.85 after 10 s and after 60 s down: the first call after readiness succeeds, 0.04 s)."""
    rng = np.random.default_rng(1)
    export_version(tmp_path / "repo", "tiny", torch.jit.script(_Tiny()),
                   [TensorSpec("ids", "INT64", (1,)), TensorSpec("x", "FP32", (4,))],
                   [TensorSpec("y", "FP32", (2,))],
                   {"ids": rng.integers(0, 5, (4, 1)), "x": rng.normal(size=(4, 4)).astype(np.float32)},
                   {}, max_batch_size=8)
    inputs = {"ids": np.zeros((1, 1), np.int64), "x": np.zeros((1, 4), np.float32)}
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    with TritonProcess(tmp_path / "repo", runtime_dir=tmp_path / "rt", **ports) as server:
        client = TritonClient(server.grpc_url)  # lives across the restart, as a replica's does
        client.infer("tiny", inputs, ["y"])
    t_end = time.monotonic() + 10
    while time.monotonic() < t_end:  # Triton is down: every call fails, the back-off grows
        with pytest.raises(BackendUnavailableError):
            client.infer("tiny", inputs, ["y"], timeout_s=1)
        time.sleep(0.2)
    with TritonProcess(tmp_path / "repo", runtime_dir=tmp_path / "rt", **ports):
        t_ready = time.monotonic()
        while True:
            try:
                client.infer("tiny", inputs, ["y"], timeout_s=1)
                break
            except BackendUnavailableError:
                assert time.monotonic() - t_ready < 10, "the old channel never reconnected"
                time.sleep(0.05)
        waited = time.monotonic() - t_ready
    print(f"reconnected after {waited:.2f} s")
    assert waited < 1.5, f"the client took {waited:.1f} s to use the restarted Triton"



def test_shared_memory_inputs_equal_grpc_inputs_and_survive_a_restart(tmp_path: Path) -> None:
    """Inputs sent through /dev/shm give Triton's same answer as inputs sent in the gRPC message;
    Triton lists the region; after a Triton restart (which forgets registrations) the client
    registers it again and answers; closing the client removes its regions."""
    import asyncio

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from serving.triton.client import KEY_HEADER, AsyncTritonClient

    rng = np.random.default_rng(2)
    export_version(tmp_path / "repo", "tiny", torch.jit.script(_Tiny()),
                   [TensorSpec("ids", "INT64", (1,)), TensorSpec("x", "FP32", (4,))],
                   [TensorSpec("y", "FP32", (2,))],
                   {"ids": rng.integers(0, 5, (4, 1)), "x": rng.normal(size=(4, 4)).astype(np.float32)},
                   {}, max_batch_size=4096)
    inputs = {"ids": rng.integers(0, 5, (3000, 1)), "x": rng.normal(size=(3000, 4)).astype(np.float32)}
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}

    async def call(client: AsyncTritonClient) -> np.ndarray:
        return (await client.infer("tiny", inputs, ["y"], timeout_s=10))["y"]

    server = TritonProcess(tmp_path / "repo", runtime_dir=tmp_path / "rt", **ports)  # one key, as across restarts

    async def go() -> None:
        shm_client = AsyncTritonClient(f"127.0.0.1:{ports['grpc_port']}", shared_memory=True, shm_min_bytes=1024,
                                       key=server.key)
        plain = AsyncTritonClient(f"127.0.0.1:{ports['grpc_port']}")
        with server:
            np.testing.assert_array_equal(await call(shm_client), await call(plain))
            status = grpcclient.InferenceServerClient(server.grpc_url).get_system_shared_memory_status(
                as_json=True, headers={f"triton-grpc-protocol-{KEY_HEADER}": server.key})
            assert list(status["regions"]) == [f"rankserve-{os.getpid()}-0"], status
            # without the key, another process cannot map this Triton's memory
            with pytest.raises(InferenceServerException, match="restricted"):
                grpcclient.InferenceServerClient(server.grpc_url).register_system_shared_memory(
                    "intruder", f"/rankserve-{os.getpid()}-0", 1024)
        with server:
            np.testing.assert_array_equal(await call(shm_client), await call(plain))
            await shm_client.close()
            await plain.close()
        assert not list(Path("/dev/shm").glob(f"rankserve-{os.getpid()}-*"))

    asyncio.run(go())


def test_an_onnx_version_runs_in_the_python_backend_with_onnxruntime(tmp_path: Path) -> None:
    from serving.repository.export import model_signature
    from serving.triton.onnx import OnnxModel
    from tests.unit.test_push_create import _onnx_ranker

    model = OnnxModel(_onnx_ranker(tmp_path / "art", 3, 2, flat=True) / "model.onnx", ["cat", "dense"])
    rng = np.random.default_rng(0)
    golden = {"cat": rng.integers(0, 9, (16, 3)), "dense": rng.normal(size=(16, 2)).astype(np.float32)}
    sig = model_signature("ranker", {**golden, "score": np.zeros((1, 1), np.float32)})
    export_version(tmp_path / "repo", "onnx_r", model, sig["inputs"], sig["outputs"], golden, {},
                   max_batch_size=sig["max_batch_size"])
    want = load_golden(tmp_path / "repo" / "onnx_r" / "1")["score"]
    with TritonProcess(tmp_path / "repo", runtime_dir=tmp_path / "rt") as server:
        got = TritonClient(server.grpc_url).infer("onnx_r", golden, ["score"])["score"]
    assert got.shape == (16, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
