"""The deployment artifacts are valid as written: every Kubernetes object of the KubeRay manifest
against the Kubernetes schemas (kubernetes-validate, strict: unknown fields are errors), its Serve
config against Ray's own schema with import paths that resolve, and the Dockerfile's paths and
entry point (no Docker engine here to build it)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.grpc_api import SERVICER_FUNCTION

ROOT = Path(__file__).resolve().parents[2]
K8S = kubernetes_validate.latest_version()


def _docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "rayservice.yaml").read_text()) if d]


def _rayservice() -> dict[str, Any]:
    return next(d for d in _docs() if d["kind"] == "RayService")


def _pod_templates() -> dict[str, dict[str, Any]]:
    cluster = _rayservice()["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    out.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return out


def test_plain_kubernetes_objects_validate() -> None:
    plain = [d for d in _docs() if d["apiVersion"] in ("v1", "apps/v1")]
    assert plain, "the manifest declares the shared repository volume claim"
    for doc in plain:
        kubernetes_validate.validate(doc, K8S, strict=True)


@pytest.mark.parametrize("group", ["head", "gpu"], ids=["head-group", "worker-group"])
def test_pod_templates_validate_as_kubernetes_pod_templates(group: str) -> None:
    """KubeRay's CRD schema is not available offline; its pod templates are plain PodTemplateSpecs."""
    template = _pod_templates()[group]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group},
                                  "template": template}, K8S, strict=True)


def test_every_pod_shares_the_repository_and_workers_know_their_triton() -> None:
    claim = next(d for d in _docs() if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for group, template in _pod_templates().items():
        vols = {v["name"]: v for v in template["spec"]["volumes"]}
        assert vols["repository"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], group
        for c in template["spec"]["containers"]:
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/app/model_repository" in mounts, (group, c["name"])
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if c["name"].startswith("ray-"):
                assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1", (group, c["name"])  # the default's ingress
    worker = _pod_templates()["gpu"]["spec"]["containers"]
    ray_worker = next(c for c in worker if c["name"] == "ray-worker")
    triton = next(c for c in worker if c["name"] == "triton")
    env = {e["name"]: e["value"] for e in ray_worker["env"]}
    grpc_port = next(a for a in triton["command"] if a.startswith("--grpc-port=")).split("=")[1]
    assert env["RANKSERVE_TRITON_URL"] == f"127.0.0.1:{grpc_port}"
    assert triton["livenessProbe"] and triton["readinessProbe"] and ray_worker["readinessProbe"]


def test_serve_config_validates_and_its_import_paths_resolve() -> None:
    service = _rayservice()
    config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert config.grpc_options is not None and config.grpc_options.grpc_servicer_functions == [SERVICER_FUNCTION]
    for path in [*config.grpc_options.grpc_servicer_functions, *(a.import_path for a in config.applications)]:
        module, _, name = path.replace(":", ".").rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), path
    deployment = config.applications[0].deployments[0]
    assert deployment.autoscaling_config is not None and deployment.max_replicas_per_node == 1
    assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    group = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert deployment.autoscaling_config["max_replicas"] <= group["maxReplicas"]


def test_the_app_builds_on_a_head_with_no_triton_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """KubeRay builds the application on the head, which runs no Triton: building must not need one."""
    from serving import app

    monkeypatch.delenv("RANKSERVE_TRITON_URL", raising=False)
    assert app.app_from_env() is not None


def test_dockerfile_copies_what_exists_and_its_entry_point_resolves() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is not in the tree"
    cmd = re.search(r'^CMD \["(\w+)"', text, re.M)
    assert cmd is not None
    pyproject = (ROOT / "pyproject.toml").read_text()
    entry = re.search(rf'^{cmd.group(1)} = "([\w.]+):(\w+)"', pyproject, re.M)
    assert entry is not None, f"{cmd.group(1)} is not a console script of the project"
    assert callable(getattr(importlib.import_module(entry.group(1)), entry.group(2)))
    assert "rankserve build" in text and "/app/seed/model_repository" in text  # models built into the image
    seed = _pod_templates()["head"]["spec"]["initContainers"][0]
    assert "/app/seed/model_repository" in " ".join(seed["command"])
