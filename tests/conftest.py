"""Session set-up shared by all tests.

Integration tests run against a COPY of the built model repository, so pushes and rollbacks made
by tests never touch ``model_repository/``. One Triton (``triton``, tests/integration/conftest.py)
and one Ray cluster + Serve application (``rankserve_url``) serve the whole session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.net import QUIET_PORTS, free_port
from tests.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILT_REPOSITORY = Path(os.environ.get("RANKSERVE_MODEL_REPOSITORY", REPO_ROOT / "model_repository"))
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="rankserve-tests-"))


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ.setdefault("RANKSERVE_DATA_DIR", str(REPO_ROOT / ".rankserve"))
    if BUILT_REPOSITORY.is_dir() and any(BUILT_REPOSITORY.glob("*/config.pbtxt")):
        copy = _SESSION_TMP / "model_repository"
        shutil.copytree(BUILT_REPOSITORY, copy, ignore=shutil.ignore_patterns(".*"))
        os.environ["RANKSERVE_MODEL_REPOSITORY"] = str(copy)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def settings():  # noqa: ANN201 - serving.config.Settings
    from serving.config import Settings

    return Settings.from_env(port=free_port(QUIET_PORTS), grpc_port=free_port(QUIET_PORTS))


@pytest.fixture(scope="session")
def n_items(settings) -> int:  # noqa: ANN001
    import numpy as np

    with np.load(settings.marketplace_path) as z:
        return int(z["item_cat"].shape[0])


@pytest.fixture(scope="session")
def rankserve_url(settings, triton) -> Iterator[str]:  # noqa: ANN001
    """One local Ray cluster and the Serve application on the session's Triton."""
    import httpx
    from ray import serve

    from serving.app import build_app
    from serving.ray_runtime import Ingress, init_ray, shutdown_ray, start_serve
    from serving.triton.client import TritonEndpoint

    ingress = Ingress.from_settings(settings)
    init_ray("local", ingress=ingress, token_file=settings.ray_token_file)
    try:
        start_serve(ingress)
        serve.run(build_app(settings, TritonEndpoint(triton.grpc_url, triton.key)), name="rankserve", route_prefix="/")
        url = f"http://127.0.0.1:{settings.port}"
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, "rankserve answers /readyz",
                 poll_s=0.5, ignoring=(httpx.HTTPError,))
        yield url
    finally:
        shutdown_ray()
