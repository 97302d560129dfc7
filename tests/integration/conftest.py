"""One embedded Triton for the whole session, on the session's copy of the built repository,
supervised (restarted when it goes down) as `rankserve serve` runs it; and the second marketplace
imported and trained once for the session (each test module serves or changes its own copy)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.repository.loading import startup_loader
from serving.repository.registry import ModelRegistry
from serving.triton.process import TritonProcess
from serving.triton.supervisor import TritonSupervisor
from tests.integration.marketplace import Marketplace, import_and_train

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    repo = Path(os.environ.get("RANKSERVE_MODEL_REPOSITORY", REPO_ROOT / "model_repository"))
    if not any(repo.glob("*/config.pbtxt")):
        pytest.fail(f"no built models in {repo}: run `make build` (make test builds first)")
    runtime = Path(os.environ.get("RANKSERVE_DATA_DIR", REPO_ROOT / ".rankserve")) / "triton-runtime"
    loader = startup_loader(ModelRegistry(repo), keep_others=2)
    with TritonProcess(repo, runtime_dir=runtime, load=loader) as server, TritonSupervisor(server):  # as serve runs it
        yield server


@pytest.fixture(scope="session")
def marketplace(tmp_path_factory: pytest.TempPathFactory) -> Marketplace:
    """The second marketplace's files, imported as ``shop`` with its default models trained (~30 s
    on 2 cores): read-only, a test works on ``marketplace.copy(...)``."""
    return import_and_train(tmp_path_factory.mktemp("marketplace"))
