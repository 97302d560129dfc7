"""The KubeRay manifest's Serve config is one Ray Serve accepts, and names what rankserve provides."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from serving.grpc_api import SERVICER_FUNCTION

ROOT = Path(__file__).resolve().parents[2]


def test_rayservice_serve_config_validates_and_its_import_paths_resolve() -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())
    config = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    assert config.grpc_options is not None and config.grpc_options.grpc_servicer_functions == [SERVICER_FUNCTION]
    for path in [*config.grpc_options.grpc_servicer_functions, *(a.import_path for a in config.applications)]:
        module, _, name = path.replace(":", ".").rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), path
