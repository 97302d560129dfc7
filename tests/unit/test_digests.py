"""The model repository is code: a version passes only as it was written, with rankserve's runner,
and Triton is asked for exactly the checked versions the retention rule keeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from serving.errors import IntegrityError
from serving.pipeline.routing import Traffic
from serving.repository.loading import config_findings, load_checked, plan_versions, wanted_versions
from serving.repository.registry import ModelRegistry
from serving.triton.config import RUNNER, TORCH_THREADS_PARAMETER
from serving.triton.digests import (
    DIGESTS_FILE,
    clear_bytecode,
    record_digests,
    refresh_runners,
    verify_repository,
    verify_version,
)


def _version(repo: Path, model: str, v: int, *, digests: bool = True) -> Path:
    d = repo / model / str(v)
    d.mkdir(parents=True)
    (repo / model / "config.pbtxt").write_text(
        f'name: "{model}"\nbackend: "python"\nparameters {{ key: "{TORCH_THREADS_PARAMETER}" value {{ string_value: "1" }} }}\n')
    (d / "model.pt").write_bytes(b"weights %d" % v)
    shutil.copy(RUNNER, d / "model.py")
    (d / "meta.json").write_text("{}")
    if digests:
        record_digests(d)
    return d


def test_a_version_as_written_passes(tmp_path: Path) -> None:
    d = _version(tmp_path, "ranker", 1)
    assert verify_version(d) == []
    assert json.loads((d / DIGESTS_FILE).read_text())["algorithm"] == "sha256"


@pytest.mark.parametrize("tamper, file, problem", [
    (lambda d: (d / "model.pt").write_bytes(b"other weights"), "model.pt", "differs"),
    (lambda d: (d / "meta.json").unlink(), "meta.json", "missing"),
    (lambda d: (d / "evil.py").write_text("import os"), "evil.py", "not recorded"),
    (lambda d: (d / "model.py").write_text("import os\n"), "model.py", "differs"),
    (lambda d: (d / DIGESTS_FILE).write_text("{"), DIGESTS_FILE, "damaged"),
])
def test_each_difference_is_named_by_file(tmp_path: Path, tamper, file: str, problem: str) -> None:  # noqa: ANN001
    d = _version(tmp_path, "ranker", 1)
    tamper(d)
    found = verify_version(d)
    assert any(f.file == file and problem in f.problem for f in found), found


def test_a_model_py_that_is_not_rankserve_s_runner_is_refused_even_with_its_digest(tmp_path: Path) -> None:
    d = _version(tmp_path, "ranker", 1, digests=False)
    (d / "model.py").write_text("import os\nos.system('true')\n")
    record_digests(d)  # whoever wrote it recorded it too
    assert [f.file for f in verify_version(d)] == ["model.py"]


def test_a_version_from_before_digests_is_unverified(tmp_path: Path) -> None:
    _version(tmp_path, "ranker", 1, digests=False)
    _version(tmp_path, "ranker", 2)
    found = verify_repository(tmp_path)
    assert found["ranker/2"] == [] and "unverified" in found["ranker/1"][0].problem


def test_bytecode_is_not_part_of_a_version_and_is_cleared_before_a_load(tmp_path: Path) -> None:
    d = _version(tmp_path, "ranker", 1)
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"whatever")
    assert verify_version(d) == []
    clear_bytecode(d)
    assert not (d / "__pycache__").exists()


def test_an_old_runner_copy_is_refreshed_and_its_digest_recorded(tmp_path: Path) -> None:
    d = _version(tmp_path, "ranker", 1, digests=False)
    # the runner before ONNX rankers: another first line, the same "Owns" line
    head = b'"""Generic Triton python-backend model: runs the version\'s TorchScript ``model.pt``.\n\n'
    owns = next(line for line in RUNNER.read_bytes().splitlines() if line.startswith(b"Owns: one model version"))
    (d / "model.py").write_bytes(head + owns + b'\n"""\n# an older runner\n')
    record_digests(d)
    assert [f.file for f in verify_version(d)] == ["model.py"]  # not this rankserve's runner
    assert refresh_runners(tmp_path, ["ranker"]) == ["ranker/1"]
    assert verify_version(d) == []


class _Triton:
    def __init__(self) -> None:
        self.loads: list[tuple[str, list[int]]] = []

    def load_model(self, name: str, config: str | None = None) -> None:
        assert config is not None
        self.loads.append((name, [int(v) for v in json.loads(config)["version_policy"]["specific"]["versions"]]))


def test_retention_keeps_the_traffic_s_versions_and_the_newest_others(tmp_path: Path) -> None:
    for v in range(1, 7):
        _version(tmp_path, "ranker", v)
    reg = ModelRegistry(tmp_path)
    reg.set_traffic("ranker", Traffic(live=2, canary_version=4, canary_percent=10, shadow_version=1,
                                      shadow_percent=5, preparing=(3,)))
    assert wanted_versions(reg, "ranker", keep_others=2) == ((1, 2, 3, 4, 5, 6), (1, 2, 3, 4))
    assert wanted_versions(reg, "ranker", keep_others=1) == ((1, 2, 3, 4, 6), (1, 2, 3, 4))
    reg.set_traffic("ranker", Traffic(live=2))
    triton = _Triton()
    plan = load_checked(triton, reg, "ranker", keep_others=2)
    assert plan.load == (2, 5, 6) and triton.loads == [("ranker", [2, 5, 6])]


def test_a_tampered_version_is_never_asked_of_triton(tmp_path: Path) -> None:
    for v in (1, 2, 3):
        _version(tmp_path, "ranker", v)
    reg = ModelRegistry(tmp_path)
    reg.set_traffic("ranker", Traffic(live=2))
    (tmp_path / "ranker" / "3" / "model.pt").write_bytes(b"swapped")
    triton = _Triton()
    plan = load_checked(triton, reg, "ranker", keep_others=2)
    assert plan.load == (1, 2) and 3 in plan.refused and triton.loads == [("ranker", [1, 2])]
    (tmp_path / "ranker" / "2" / "model.pt").write_bytes(b"swapped too")  # the live one
    with pytest.raises(IntegrityError, match="ranker/2/model.pt"):
        load_checked(triton, reg, "ranker", keep_others=2)
    assert len(triton.loads) == 1  # nothing asked: Triton keeps what it holds


@pytest.mark.parametrize("config, problem", [
    ('name: "ranker"\nbackend: "onnxruntime_custom"\n', "backend"),
    ('name: "ranker"\nbackend: "python"\nparameters { key: "EXECUTION_ENV_PATH" value { string_value: "/x.tar.gz" } }\n',
     "EXECUTION_ENV_PATH"),
])
def test_a_config_that_would_run_other_code_is_refused(tmp_path: Path, config: str, problem: str) -> None:
    _version(tmp_path, "ranker", 1)
    (tmp_path / "ranker" / "config.pbtxt").write_text(config)
    reg = ModelRegistry(tmp_path)
    assert any(problem in p for p in config_findings(reg, "ranker"))
    assert plan_versions(reg, "ranker", 2).load == ()
    with pytest.raises(IntegrityError, match=problem):
        load_checked(_Triton(), reg, "ranker", keep_others=2)
