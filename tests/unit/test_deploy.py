"""The deployment artifacts are valid as written and hardened as docs/security.md says.

Valid: every Kubernetes object of the KubeRay manifest (and of the GPU-sharing configuration)
against the Kubernetes schemas (kubernetes-validate, strict: unknown fields are errors), its Serve
config against Ray's own schema with import paths that resolve, the settings each pod runs with
against rankserve's own, and the Dockerfile's paths and entry point (no Docker engine here to
build it). Hardened: only the API open to everyone, every container unprivileged on a read-only
root, the model versions read-only where they are served, Ray's token and rankserve's API keys on
every pod, Triton's restricted protocols, TLS at every node's HAProxy, GPUs from the device plugin.
"""

from __future__ import annotations

import importlib
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.config import Settings
from serving.grpc_api import SERVICER_FUNCTION
from serving.ray_hardening import SETUP_HOOK
from serving.triton.client import KEY_HEADER

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "rayservice.yaml"
GPU_SHARING = ROOT / "deploy" / "gpu-sharing.yaml"
DOCKERFILE = ROOT / "Dockerfile"
K8S = kubernetes_validate.latest_version()
REPOSITORY = "/app/model_repository"
# the containers that may write the model repository: the head's seed init container and the admin pod
REPOSITORY_WRITERS = {("head", "seed-repository"), ("admin", "rankserve")}


def _docs(path: Path = MANIFEST) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(kind: str, name: str | None = None, path: Path = MANIFEST) -> dict[str, Any]:
    return next(d for d in _docs(path) if d["kind"] == kind and name in (None, d["metadata"]["name"]))


def _rayservice() -> dict[str, Any]:
    return _one("RayService")


def _pod_templates() -> dict[str, dict[str, Any]]:
    """Every pod template: the Ray head, each worker group (by its name) and the admin pod."""
    cluster = _rayservice()["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    out.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    out["admin"] = _one("Deployment", "rankserve-admin")["spec"]["template"]
    return out


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]


def _container(group: str, name: str) -> dict[str, Any]:
    return next(c for c in _containers(_pod_templates()[group]) if c["name"] == name)


def _all_containers() -> list[tuple[str, dict[str, Any]]]:
    return [(group, c) for group, template in _pod_templates().items() for c in _containers(template)]


def _ray_containers() -> list[dict[str, Any]]:
    """The containers that run Ray processes (KubeRay's Ray container is each Ray pod's first)."""
    return [t["spec"]["containers"][0] for group, t in _pod_templates().items() if group != "admin"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    """A container's environment as Kubernetes builds it: its ConfigMaps (``envFrom``), then its
    own ``env``; a value from a Secret is its ``valueFrom`` (``{"secretKeyRef": ...}``)."""
    maps = {d["metadata"]["name"]: d["data"] for d in _docs() if d["kind"] == "ConfigMap"}
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    env.update({e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])})
    return env


def _volumes(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in template["spec"]["volumes"]}


def _mount(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount that holds ``path`` in ``container`` (the deepest one)."""
    holding = [m for m in container.get("volumeMounts", []) if Path(path).is_relative_to(m["mountPath"])]
    assert holding, f"{container['name']} has no volume at {path}"
    return max(holding, key=lambda m: len(m["mountPath"]))


def _image_env() -> dict[str, str]:
    """The Dockerfile's ENV values (comment lines may sit inside a continued instruction)."""
    text = re.sub(r"^\s*#.*\n", "", DOCKERFILE.read_text(), flags=re.M)
    out: dict[str, str] = {}
    for body in re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", text, re.M):
        out.update(re.findall(r"(\w+)=(\S+)", body.replace("\\\n", " ")))
    return out


def _image_user() -> tuple[int, int]:
    users = re.findall(r"^USER (\d+):(\d+)\s*$", DOCKERFILE.read_text(), re.M)
    assert users, "the Dockerfile names its runtime user as USER uid:gid"
    return int(users[-1][0]), int(users[-1][1])


def _claim(name: str) -> dict[str, Any]:
    claim = _one("PersistentVolumeClaim", name)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], name  # every node mounts it
    return claim


def test_plain_kubernetes_objects_validate() -> None:
    plain = [d for path in (MANIFEST, GPU_SHARING) for d in _docs(path) if not d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in plain} == {"PersistentVolumeClaim", "ConfigMap", "NetworkPolicy", "Deployment"}
    for doc in plain:
        kubernetes_validate.validate(doc, K8S, strict=True)


@pytest.mark.parametrize("group", ["head", "gpu"], ids=["head-group", "worker-group"])
def test_pod_templates_validate_as_kubernetes_pod_templates(group: str) -> None:
    """KubeRay's CRD schema is not available offline; its pod templates are plain PodTemplateSpecs."""
    template = _pod_templates()[group]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group},
                                  "template": template}, K8S, strict=True)


def test_only_the_api_is_open_to_everyone() -> None:
    """The API ports from anywhere; every other port only from this cluster's own pods, the
    dashboard also from the KubeRay operator; nothing from an address range."""
    policy = _one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    ours = policy["podSelector"]["matchLabels"]
    for group, template in _pod_templates().items():
        assert ours.items() <= template["metadata"]["labels"].items(), f"the policy does not cover the {group} pods"
    serve = yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])
    http = {p["containerPort"] for c in _ray_containers() for p in c["ports"] if p["name"] == "http"}
    (open_to_all,) = [rule for rule in policy["ingress"] if "from" not in rule]
    assert {p["port"] for p in open_to_all["ports"]} == {*http, serve["grpc_options"]["port"]} == {8000, 9000}
    for rule in policy["ingress"]:
        for peer in rule.get("from", []):
            assert set(peer) <= {"podSelector", "namespaceSelector"}, peer  # no ipBlock
            if peer["podSelector"]["matchLabels"] == ours:
                assert "namespaceSelector" not in peer and "ports" not in rule  # this cluster's pods: Ray's ports
            else:
                assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
                assert [p["port"] for p in rule["ports"]] == [8265]  # the dashboard, which wants the Ray token
    head = _rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert "dashboard-host" in head["rayStartParams"] and "dashboard-port" not in head["rayStartParams"]


def test_every_container_runs_unprivileged_as_the_image_s_user() -> None:
    uid, gid = _image_user()
    for group, template in _pod_templates().items():
        spec = template["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid)
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), group
        for c in _containers(template):
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities") == {"drop": ["ALL"]}, c["name"]
            assert sc.get("readOnlyRootFilesystem") is True and not sc.get("privileged"), c["name"]
            assert sc.get("runAsUser", uid) == uid and sc.get("runAsNonRoot", True) is True, c["name"]
        if group != "head":  # the head's autoscaler calls the Kubernetes API with the pod's service account
            assert spec["automountServiceAccountToken"] is False, group
    autoscaler = _rayservice()["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]
    assert autoscaler["allowPrivilegeEscalation"] is False and autoscaler["capabilities"] == {"drop": ["ALL"]}


def test_what_a_container_writes_has_a_volume_of_its_own() -> None:
    """With a read-only root: Ray's session folder, HAProxy's folder, HOME and scratch files live in
    the pod's /tmp (an emptyDir), the repository's seed in the repository volume."""
    for group, template in _pod_templates().items():
        volumes = _volumes(template)
        for c in _containers(template):
            if (group, c["name"]) == ("head", "seed-repository"):
                assert [m["mountPath"] for m in c["volumeMounts"]] == [REPOSITORY]
                continue
            assert "emptyDir" in volumes[_mount(c, "/tmp")["name"]], (group, c["name"])
            if c in template["spec"]["containers"]:
                assert _env(c)["HOME"] == "/tmp", (group, c["name"])


def test_the_model_versions_are_read_only_where_they_are_served() -> None:
    """Replicas, Triton and the head mount the repository read-only; only the seed (on the head)
    and the admin pod write it, so nothing races a load and a serving pod cannot change what runs."""
    claim = _claim("rankserve-repository")["metadata"]["name"]
    writers = set()
    for group, template in _pod_templates().items():
        volumes = _volumes(template)
        for c in _containers(template):
            mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == REPOSITORY]
            if not mounts:
                assert c in template["spec"]["initContainers"], f"{group}/{c['name']} does not see the repository"
                continue
            (mount,) = mounts
            assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim
            if not mount.get("readOnly"):
                writers.add((group, c["name"]))
    assert writers == REPOSITORY_WRITERS
    assert _volumes(_pod_templates()["gpu"])["repository"]["persistentVolumeClaim"]["readOnly"] is True


def test_replicas_write_their_state_to_a_volume_of_their_own() -> None:
    """Heartbeats and metrics snapshots go to rankserve-state, which replicas write and push reads.
    Replicas run with the settings the head built the application with: the head names it too."""
    claim = _claim("rankserve-state")["metadata"]["name"]
    head = Settings.from_env({"RANKSERVE_STATE_DIR": _env(_container("head", "ray-head"))["RANKSERVE_STATE_DIR"]})
    assert not head.nodes_dir.is_relative_to(REPOSITORY)
    for group, name in (("gpu", "ray-worker"), ("admin", "rankserve")):
        c = _container(group, name)
        mount = _mount(c, str(head.nodes_dir))
        assert mount["mountPath"] == _env(c)["RANKSERVE_STATE_DIR"] and not mount.get("readOnly"), name
        assert _volumes(_pod_templates()[group])[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim


def test_the_served_log_is_on_the_shared_writable_volume_where_replicas_and_the_loop_run() -> None:
    """Replicas write the served log and events (one stream each) and the admin pod's log join,
    canary report and learn read them: one ReadWriteMany volume, never the read-only repository."""
    claim = _claim("rankserve-state")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for group, name in (("gpu", "ray-worker"), ("admin", "rankserve")):
        c = _container(group, name)
        log_dir = Settings.from_env({"RANKSERVE_LOG_DIR": _env(c)["RANKSERVE_LOG_DIR"]}).log_dir
        assert log_dir is not None and not log_dir.is_relative_to(REPOSITORY), name
        mount = _mount(c, str(log_dir))
        assert not mount.get("readOnly"), name
        assert (_volumes(_pod_templates()[group])[mount["name"]]["persistentVolumeClaim"]["claimName"]
                == claim["metadata"]["name"]), name


def test_gpus_come_from_the_device_plugin_one_time_slice_per_container() -> None:
    """No container sees the node's GPUs unasked (NVIDIA_VISIBLE_DEVICES=all, or the image's default);
    the worker pod's two GPU containers each ask for one time-slice, and the device plugin's
    configuration slices each GPU that many ways."""
    asked = {}
    for group, c in _all_containers():
        env = _env(c)
        gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if gpus:
            asked[(group, c["name"])] = gpus
            assert "NVIDIA_VISIBLE_DEVICES" not in env, c["name"]  # the device plugin sets it
        else:
            assert env.get("NVIDIA_VISIBLE_DEVICES") == "void", (group, c["name"])
    assert asked == {("gpu", "ray-worker"): 1, ("gpu", "triton"): 1}
    config = yaml.safe_load(_one("ConfigMap", path=GPU_SHARING)["data"]["rankserve"])
    assert config["sharing"]["timeSlicing"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": len(asked)}]
    deployment = yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])["applications"][0]["deployments"][0]
    assert deployment["ray_actor_options"]["num_gpus"] <= asked[("gpu", "ray-worker")]  # what Ray sees on the node


@pytest.mark.parametrize("where", [f"{g}/{c['name']}" for g, c in _all_containers() if c.get("envFrom")])
def test_each_pod_s_settings_are_valid_and_want_api_keys(where: str) -> None:
    """The image's settings with the pod's (a value from a Secret stands in as text) pass
    rankserve's own checks: API keys on, gRPC messages bounded by the HTTP body limit."""
    c = _container(*where.split("/"))
    env = {**_image_env(), **{k: v if isinstance(v, str) else "from-a-secret" for k, v in _env(c).items()}}
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("RANKSERVE_")})
    assert settings.auth_mode == "keys" and settings.host == "0.0.0.0"
    assert env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == str(settings.max_body_bytes) == "262144"


def test_ray_token_auth_on_every_ray_process_with_the_token_from_a_secret() -> None:
    auth = _rayservice()["spec"]["rayClusterConfig"]["authOptions"]
    assert auth["mode"] == "token"
    for c in [*_ray_containers(), _container("admin", "rankserve")]:
        env = _env(c)
        assert env["RAY_AUTH_MODE"] == "token", c["name"]
        # KubeRay reads the token under the key auth_token, to call the dashboard with it
        assert env["RAY_AUTH_TOKEN"] == {"secretKeyRef": {"name": auth["secretName"], "key": "auth_token"}}, c["name"]


def test_every_ray_worker_process_runs_rankserve_s_setup_hook() -> None:
    """Through Ray's own variable for the hook, in every Ray container's environment: a Serve
    application's runtime_env hook would reach no Serve actor."""
    from ray._private import ray_constants

    for c in _ray_containers():
        assert _env(c)[ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR] == SETUP_HOOK, c["name"]
        assert _env(c)["RAY_SERVE_ENABLE_HA_PROXY"] == "1", c["name"]  # the hook's HAProxy changes apply
    module, _, name = SETUP_HOOK.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def test_triton_wants_its_key_listens_on_loopback_and_starts_with_no_model() -> None:
    worker, triton = _container("gpu", "ray-worker"), _container("gpu", "triton")
    args = triton["args"]
    flags = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    assert _env(triton)["RANKSERVE_TRITON_KEY"] == _env(worker)["RANKSERVE_TRITON_KEY"]
    assert "secretKeyRef" in _env(worker)["RANKSERVE_TRITON_KEY"]
    restricted = f"model-repository,shared-memory:{KEY_HEADER}=$(RANKSERVE_TRITON_KEY)"  # expanded by Kubernetes
    assert flags["--grpc-restricted-protocol"] == restricted and flags["--http-restricted-api"] == restricted
    # nothing on disk is loaded unchecked: the replica's follower loads the checked versions
    assert flags["--model-control-mode"] == "explicit" and not any(a.startswith("--load-model") for a in args)
    assert {flags[f"--{kind}-address"] for kind in ("http", "grpc", "metrics")} == {"127.0.0.1"}
    assert _env(worker)["RANKSERVE_TRITON_URL"] == f"127.0.0.1:{flags['--grpc-port']}"
    assert _pod_templates()["gpu"]["spec"]["shareProcessNamespace"] is False  # the key is on Triton's command line
    # a restarted Triton first removes the python backend's regions of the one before (not the replica's)
    prefix = flags["--backend-config"].removeprefix("python,shm-region-prefix-name=")
    assert prefix.startswith("rankserve-triton-") and f"rm -f /dev/shm/{prefix}*;" in triton["command"][2]
    assert triton["livenessProbe"] and triton["readinessProbe"] and worker["readinessProbe"]


@pytest.mark.parametrize("group", ["head", "gpu"])
def test_every_node_s_haproxy_serves_tls_from_the_secret(group: str) -> None:
    """ingress-config writes the certificate where the Ray container's HAProxy reads it: the same
    emptyDir, HAProxy's folder; the key comes from the TLS Secret, mounted read-only."""
    template = _pod_templates()[group]
    init = next(c for c in template["spec"]["initContainers"] if c["name"] == "ingress-config")
    ray = template["spec"]["containers"][0]
    pem = Path(_env(ray)["RANKSERVE_TLS_CERT_FILE"])
    assert pem.parent == Path(_env(ray)["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent
    assert _mount(init, str(pem)) == _mount(ray, str(pem))
    assert "emptyDir" in _volumes(template)[_mount(ray, str(pem))["name"]]
    secret = _mount(init, _env(init)["TLS_DIR"])
    assert secret["readOnly"] is True
    assert _volumes(template)[secret["name"]]["secret"]["secretName"] == "rankserve-tls"


def test_the_worker_is_ready_when_its_https_ingress_answers() -> None:
    probe = _container("gpu", "ray-worker")["readinessProbe"]["exec"]["command"]
    assert probe[0] == "curl" and "k" in probe[1] and probe[-1] == "https://127.0.0.1:8000/readyz"
    assert _rayservice()["spec"]["excludeHeadPodFromServeSvc"] is True  # the operator checks the head in plain HTTP


def test_ingress_config_writes_the_certificate_and_the_limits_haproxy_reads(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest's init script, run here with the pod's paths moved under tmp_path: one PEM
    (chain, then key) only its owner reads, in a private folder, and the limits the HAProxy
    manager's set-up hook reads from there, TLS and the pod's read time-out included."""
    from ray.serve._private import haproxy

    from serving import ray_hardening

    init = _container("gpu", "ingress-config")
    tls, folder = tmp_path / "tls", tmp_path / "haproxy-serve"
    tls.mkdir()
    (tls / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\nchain\n-----END CERTIFICATE-----\n")
    (tls / "tls.key").write_text("-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n")
    env = {**_image_env(), **_env(init), "TLS_DIR": str(tls), "RANKSERVE_TLS_CERT_FILE": str(folder / "tls.pem"),
           "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"), "RANKSERVE_READ_TIMEOUT_S": "7",
           "HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(init["command"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    pem = folder / "tls.pem"
    assert pem.read_text() == (tls / "tls.crt").read_text() + (tls / "tls.key").read_text()
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(folder / "haproxy.cfg"))
    limits = ray_hardening._read_limits()
    assert limits.tls_cert_file == str(pem.resolve()) and limits.read_timeout_s == 7
    config = ray_hardening.harden_haproxy_template(haproxy.HAPROXY_CONFIG_TEMPLATE, limits)
    assert f"ssl crt {pem.resolve()} alpn h2,http/1.1" in config and "timeout http-request 7s" in config


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
    text = DOCKERFILE.read_text()
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
    seed = _container("head", "seed-repository")
    assert "/app/seed/model_repository" in " ".join(seed["command"])


def test_the_image_runs_as_a_user_who_owns_only_what_it_writes() -> None:
    """The user exists with the manifest's uid and gid, owns the data folder and the model
    repository (what the embedded default writes), and nothing runs as root after the switch."""
    text = DOCKERFILE.read_text()
    uid, gid = _image_user()
    assert uid != 0 and gid != 0
    assert re.search(rf"groupadd --gid {gid} rankserve\b", text) and re.search(rf"useradd --uid {uid} --gid {gid}\b", text)
    owned = re.search(rf"chown -R {uid}:{gid} (.+)$", text, re.M)
    assert owned is not None
    env = _image_env()
    assert sorted(owned.group(1).split()) == sorted([env["RANKSERVE_DATA_DIR"], env["RANKSERVE_MODEL_REPOSITORY"]])
    assert text.rindex(f"USER {uid}:{gid}") > text.rindex("\nRUN ")
