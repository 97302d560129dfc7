"""Model push workflow against the real server: refusals leave everything as it was; a push and a
rollback under load fail no request; user tower and index move together."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from serving.errors import PushRefusedError, RankserveError
from serving.pipeline.features import FeatureTables
from serving.repository.nodes import live_nodes
from serving.repository.push import _model_lock, push, rollback
from serving.repository.registry import ModelRegistry
from serving.triton.client import TritonClient
from tests.load import Load
from tests.waiting import metric, wait_for, wait_for_answers

pytestmark = pytest.mark.integration


def _live_artifact(registry: ModelRegistry, model: str, dest: Path) -> Path:
    """An artifact made of the live version's own files (a valid push)."""
    src = registry.version_dir(model, registry.traffic(model).live)
    dest.mkdir(parents=True)
    for name in ("model.pt", "golden.npz", "meta.json", "item_tower.pt"):
        if (src / name).exists():
            shutil.copy(src / name, dest / name)
    return dest


def _snapshot(repo: Path) -> dict[str, object]:
    """Every model's directory listing and traffic file (the nodes' heartbeats, `.nodes/`, change
    every second and are not the repository's content)."""
    out: dict[str, object] = {}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        names = sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".push.lock"))
        traffic = model_dir / "traffic.json"
        out[model_dir.name] = (names, traffic.read_text() if traffic.exists() else None)
    return out


def _version_served(url: str, user_id: int = 11) -> int:
    r = httpx.post(f"{url}/v1/rank", json={"user_id": user_id, "k": 3}, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.json()["model"]["version"])


class _Scaled(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.inner = inner
        self.scale = scale

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.inner(cat, dense) * self.scale


class _NanOnColdStart(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        out = self.inner(cat, dense)
        cold = (cat[:, 0] == 0).unsqueeze(1)
        return torch.where(cold, torch.full_like(out, float("nan")), out)


def _rescript(art: Path, module: torch.nn.Module, *, regolden: bool = True) -> None:
    scripted = torch.jit.script(module)
    scripted.save(str(art / "model.pt"))
    if regolden:
        with np.load(art / "golden.npz") as z:
            g = {k: z[k] for k in z.files}
        with torch.inference_mode():
            g["score"] = scripted(torch.from_numpy(g["cat"]), torch.from_numpy(g["dense"])).numpy()
        np.savez(art / "golden.npz", **g)


BROKEN = ["unknown_model", "not_a_directory", "missing_model", "truncated_model", "garbage_model",
          "wrong_shape", "wrong_dtype", "golden_mismatch", "nan_on_real_rows", "scores_out_of_range",
          "version_exists", "concurrent_push"]


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_artifacts_are_refused_and_live_keeps_serving(kind: str, settings, rankserve_url: str,
                                                             triton, tmp_path: Path) -> None:
    registry = ModelRegistry(settings.model_repository)
    tables = FeatureTables.load(settings.marketplace_path)
    art = _live_artifact(registry, "ranker", tmp_path / "art")
    live_before = _version_served(rankserve_url)
    before = _snapshot(settings.model_repository)
    model, version = "ranker", None
    inner = torch.jit.load(str(art / "model.pt"))
    if kind == "unknown_model":
        model = "no_such_model"
    elif kind == "not_a_directory":
        art = tmp_path / "missing"
    elif kind == "missing_model":
        (art / "model.pt").unlink()
    elif kind == "truncated_model":
        data = (art / "model.pt").read_bytes()
        (art / "model.pt").write_bytes(data[: len(data) // 2])
    elif kind == "garbage_model":
        (art / "model.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "wrong_shape":
        with np.load(art / "golden.npz") as z:
            g = {k: z[k] for k in z.files}
        g["dense"] = np.concatenate([g["dense"], g["dense"][:, :1]], axis=1)
        np.savez(art / "golden.npz", **g)
    elif kind == "wrong_dtype":
        with np.load(art / "golden.npz") as z:
            g = {k: z[k] for k in z.files}
        g["cat"] = g["cat"].astype(np.int32)
        np.savez(art / "golden.npz", **g)
    elif kind == "golden_mismatch":
        with np.load(art / "golden.npz") as z:
            g = {k: z[k] for k in z.files}
        g["score"] = g["score"] + 0.05
        np.savez(art / "golden.npz", **g)
    elif kind == "nan_on_real_rows":
        _rescript(art, _NanOnColdStart(inner))
    elif kind == "scores_out_of_range":
        _rescript(art, _Scaled(inner, 50.0))  # click probabilities of a few percent, pushed past 1
    elif kind == "version_exists":
        version = registry.versions("ranker")[0]
    client = TritonClient(triton.grpc_url, triton.key)
    if kind == "concurrent_push":
        with _model_lock(settings.model_repository / "ranker"), pytest.raises(PushRefusedError, match="in progress"):
            push(registry, model, art, tables, client)
    else:
        with pytest.raises(PushRefusedError) as info:
            push(registry, model, art, tables, client, version=version)
        assert info.value.message  # a reason, for the engineer who pushed
    assert _snapshot(settings.model_repository) == before
    assert _version_served(rankserve_url) == live_before
    assert httpx.get(f"{rankserve_url}/readyz", timeout=30).status_code == 200


def _bodies() -> list[dict[str, object]]:
    """Recall and given-candidates requests with a generous deadline: on 2 cores a push's
    validation competes with serving for the CPU."""
    rng = np.random.default_rng(1)
    bodies: list[dict[str, object]] = [{"user_id": int(u), "k": 10, "timeout_ms": 10000}
                                       for u in rng.integers(0, 50, 200)]
    return bodies + [{"user_id": u, "k": 5, "candidates": list(range(10, 60)), "timeout_ms": 10000} for u in range(20)]


def _wait_for_version(url: str, want: int) -> None:
    wait_for(lambda: _version_served(url) == want, lambda: f"the server answers with ranker version {want} "
             f"(it answers with {_version_served(url)})")


def _wait_for_traffic(url: str, model: str, version: int, role: str, percent: float | None) -> None:
    """Until the replica routes by the traffic file: ``version`` has ``role`` at ``percent`` (None:
    the version has left that role)."""
    def held() -> bool:
        share = metric(url, "rankserve_model_traffic_percent", model=model, version=str(version), role=role)
        return share == (percent or 0.0)

    wait_for(held, f"the replica gives {model} v{version} the role {role} at {percent}%")


def test_push_and_rollback_under_load_fail_no_request(settings, rankserve_url: str, triton,
                                                      tmp_path: Path) -> None:
    registry = ModelRegistry(settings.model_repository)
    tables = FeatureTables.load(settings.marketplace_path)
    client = TritonClient(triton.grpc_url, triton.key)
    old = registry.traffic("ranker").live
    art = _live_artifact(registry, "ranker", tmp_path / "art")
    with Load(rankserve_url, _bodies(), tmp_path / "load") as load:
        wait_for_answers(rankserve_url, 30)
        res = push(registry, "ranker", art, tables, client)
        # every node serving the repository (here the session's one replica) had loaded the version
        # into its Triton before traffic named it: what a multi-node deployment relies on
        assert sorted(res.checks["nodes"]) == sorted(n.key for n in live_nodes(settings.nodes_dir))
        assert client.model_ready("ranker", str(res.version))
        _wait_for_version(rankserve_url, res.version)
        wait_for_answers(rankserve_url, 30)
        rollback(registry, "ranker")
        _wait_for_version(rankserve_url, old)
        wait_for_answers(rankserve_url, 30)
        summary, rows = load.finish()
    versions = {r["response"]["model"]["version"] for r in rows if r["status"] == 200}
    print(f"zero-downtime run: {summary['requests']} requests, {summary['failures']} failed, versions {versions}")
    assert summary["failures"] == 0 and summary["requests"] > 50, summary
    assert {old, res.version} <= versions, versions


def _wait_for_tower(url: str, want: int) -> None:
    wait_for(lambda: metric(url, "rankserve_model_version", model="user_tower") == want,
             f"the replica recalls with user tower version {want}")


class _Rotated(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, rot: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.rot = rot

    def forward(self, user_cat: torch.Tensor, user_dense: torch.Tensor) -> torch.Tensor:
        return self.inner(user_cat, user_dense) @ self.rot


class _RotatedItems(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, rot: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.rot = rot

    def forward(self, item_cat: torch.Tensor, item_num: torch.Tensor, item_dense: torch.Tensor) -> torch.Tensor:
        return self.inner(item_cat, item_num, item_dense) @ self.rot


def test_user_tower_and_index_switch_together_under_load(settings, rankserve_url: str, triton,
                                                         tmp_path: Path) -> None:
    """A rotated user tower + rotated item tower recall exactly what the old pair recalls; any
    request that paired one version's user embedding with the other's index would differ."""
    registry = ModelRegistry(settings.model_repository)
    tables = FeatureTables.load(settings.marketplace_path)
    client = TritonClient(triton.grpc_url, triton.key)
    art = _live_artifact(registry, "user_tower", tmp_path / "tower")
    dim = int(np.load(art / "golden.npz")["embedding"].shape[1])
    rot = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(3)))[0]
    scripted = torch.jit.script(_Rotated(torch.jit.load(str(art / "model.pt")), rot))
    scripted.save(str(art / "model.pt"))
    with np.load(art / "golden.npz") as z:
        g = {k: z[k] for k in z.files}
    with torch.inference_mode():
        g["embedding"] = scripted(torch.from_numpy(g["user_cat"]), torch.from_numpy(g["user_dense"])).numpy()
    np.savez(art / "golden.npz", **g)
    torch.jit.script(_RotatedItems(torch.jit.load(str(art / "item_tower.pt")), rot)).save(str(art / "item_tower.pt"))

    baseline = {}
    for u in range(50):
        r = httpx.post(f"{rankserve_url}/v1/rank", json={"user_id": u, "k": 10}, timeout=30).json()
        baseline[u] = [it["item_id"] for it in r["items"]]
    old_tower = registry.traffic("user_tower").live
    with Load(rankserve_url, _bodies(), tmp_path / "load") as load:
        wait_for_answers(rankserve_url, 30)
        res = push(registry, "user_tower", art, tables, client)
        _wait_for_tower(rankserve_url, res.version)  # the replica now recalls with the new pair
        wait_for_answers(rankserve_url, 40)
        rollback(registry, "user_tower")
        _wait_for_tower(rankserve_url, old_tower)
        wait_for_answers(rankserve_url, 30)
        summary, rows = load.finish()
    assert summary["failures"] == 0, summary
    # Rotation preserves inner products, but the push rebuilds the IVF index (its own k-means and
    # tuned nprobe), so an answer may differ from the baseline by the ANN's own recall error: one
    # or two of the top 10. A request that paired one version's user embedding with the other's
    # index searches rotated space against unrotated items and shares ~0 of 10 with the baseline.
    overlaps = []
    for r in rows:
        req, resp = r["request"], r["response"]
        if "candidates" in req or resp.get("degraded"):
            continue
        got = [it["item_id"] for it in resp["items"]]
        overlaps.append(len(set(got) & set(baseline[req["user_id"]])))
        assert overlaps[-1] >= 6, (req, got, baseline[req["user_id"]])
    print(f"tower+index switch run: {summary['requests']} requests, {summary['failures']} failed, "
          f"{len(overlaps)} recall answers checked against the baseline, mean overlap@10 "
          f"{np.mean(overlaps):.2f}, min {min(overlaps)}")
    assert len(overlaps) > 20
    assert np.mean(overlaps) >= 9.0, np.mean(overlaps)
    assert registry.traffic("user_tower").live == old_tower and res.version != old_tower


def test_rollback_refuses_unknown_version(settings) -> None:
    with pytest.raises(RankserveError, match="no version"):
        rollback(ModelRegistry(settings.model_repository), "ranker", 999)


def test_exported_training_artifact_is_valid_and_canary_splits_by_user(settings, rankserve_url: str, triton,
                                                                      tmp_path: Path) -> None:
    """The artifact the demo export writes (training.export) passes validation; a canary push
    sends a stable share of users to it; promote makes it live; rollback restores the old one."""
    from serving.repository.push import promote

    registry = ModelRegistry(settings.model_repository)
    tables = FeatureTables.load(settings.marketplace_path)
    exported = settings.marketplace_path.parent / "artifacts" / "seed0" / "ranker"
    assert (exported / "model.pt").is_file(), "the build exports artifacts next to the data"
    old = registry.traffic("ranker").live
    res = push(registry, "ranker", exported, tables, TritonClient(triton.grpc_url, triton.key), canary_percent=30)
    assert res.traffic.live == old and res.traffic.canary_version == res.version
    assert res.checks["golden_max_abs_error"] <= 1e-4
    _wait_for_traffic(rankserve_url, "ranker", res.version, "canary", 30.0)
    with ThreadPoolExecutor(4) as pool:  # users are routed by their id, whatever the order
        seen = dict(enumerate(pool.map(lambda u: _version_served(rankserve_url, u), range(200))))
    share = sum(v == res.version for v in seen.values()) / len(seen)
    assert 0.15 < share < 0.45, share
    again = {u: _version_served(rankserve_url, u) for u in range(0, 200, 10)}
    assert all(again[u] == seen[u] for u in again), "a user must see one version consistently"
    assert promote(registry, "ranker").live == res.version
    _wait_for_version(rankserve_url, res.version)
    rollback(registry, "ranker")
    _wait_for_version(rankserve_url, old)


def test_shadow_scores_off_the_response_path_and_reports_agreement(settings, rankserve_url: str, triton,
                                                                   tmp_path: Path) -> None:
    registry = ModelRegistry(settings.model_repository)
    tables = FeatureTables.load(settings.marketplace_path)
    art = _live_artifact(registry, "ranker", tmp_path / "shadow")
    _rescript(art, _Scaled(torch.jit.load(str(art / "model.pt")), 0.5))  # same order, half the scores
    old = registry.traffic("ranker").live
    res = push(registry, "ranker", art, tables, TritonClient(triton.grpc_url, triton.key), shadow_percent=100)
    assert res.traffic.live == old and res.traffic.shadow_version == res.version
    _wait_for_traffic(rankserve_url, "ranker", res.version, "shadow", 100.0)
    for u in range(30):
        r = httpx.post(f"{rankserve_url}/v1/rank", json={"user_id": u, "k": 10}, timeout=30).json()
        assert r["model"]["version"] == old  # the shadow never answers

    def shadow_stats() -> dict[str, float] | None:
        """The shadow's figures once it has scored 20 requests (it scores off the response path)."""
        models = httpx.get(f"{rankserve_url}/v1/models", timeout=30).json()
        ranker = next(m for m in models["models"] if m["name"] == "ranker")
        stats: dict[str, float] | None = ranker["shadow"].get(f"v{res.version}")
        return stats if stats and stats["requests"] >= 20 else None

    stats = wait_for(shadow_stats, f"ranker v{res.version} scores 20 requests in the shadow")
    assert stats["rank_correlation"] > 0.999 and stats["overlap_at_k"] == 1.0
    assert 0.0 < stats["mean_abs_score_diff"] < 0.5
    rollback(registry, "ranker")
    assert registry.traffic("ranker").shadow_version is None
    _wait_for_traffic(rankserve_url, "ranker", res.version, "shadow", None)  # the next test starts without it


def test_cli_push_models_and_rollback(settings, rankserve_url: str, triton, tmp_path: Path) -> None:
    """The `rankserve` commands as an ML engineer runs them (their own processes)."""
    import os

    registry = ModelRegistry(settings.model_repository)
    old = registry.traffic("ranker").live
    art = _live_artifact(registry, "ranker", tmp_path / "cli")
    env = {**os.environ, "RANKSERVE_MODEL_REPOSITORY": str(settings.model_repository),
           "RANKSERVE_DATA_DIR": str(settings.data_dir), "RANKSERVE_PORT": str(settings.port),
           "RANKSERVE_TRITON_URL": triton.grpc_url, "RANKSERVE_TRITON_KEY": triton.key}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "serving.cli", *args], env=env, capture_output=True,
                              text=True, timeout=300)

    pushed = cli("push", "ranker", str(art), "--canary", "10")
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    new = json.loads(pushed.stdout)["version"]
    rows = json.loads(cli("models", "--json").stdout)
    mine = {r["version"]: r for r in rows if r["model"] == "ranker"}
    assert mine[new]["role"] == "canary" and mine[new]["traffic_pct"] == 10.0
    assert mine[old]["role"] == "live" and mine[old]["traffic_pct"] == 90.0
    assert mine[new]["state"] == "READY" and mine[new]["validation"]["rows_checked"] > 0
    refused = cli("push", "ranker", str(tmp_path / "nope"))
    assert refused.returncode == 3 and "refused" in refused.stderr
    assert cli("rollback", "ranker").returncode == 0
    assert registry.traffic("ranker").live == old and registry.traffic("ranker").canary_version is None


def test_cli_refuses_model_names_outside_the_repository(settings, tmp_path: Path) -> None:
    """Names with separators or `..`, and names that resolve to nothing, are refused in one line,
    before any file is touched (no lock file, no traffic file appears anywhere)."""
    import os

    root = settings.model_repository.parent
    (root / "deploy" / "3").mkdir(parents=True, exist_ok=True)  # "../deploy" and its "version 3" exist beside it
    env = {**os.environ, "RANKSERVE_MODEL_REPOSITORY": str(settings.model_repository),
           "RANKSERVE_DATA_DIR": str(settings.data_dir)}
    before = sorted(p.name for p in root.iterdir())
    for args in (("rollback", "../deploy", "3"), ("rollback", "..", "3"), ("promote", "ranker/../user_tower"),
                 ("rollback", "no_such_model"), ("push", "../x", str(tmp_path))):
        out = subprocess.run([sys.executable, "-m", "serving.cli", *args], env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 3, (args, out.stderr[-500:])
        assert "unknown model" in out.stderr and "Traceback" not in out.stderr, out.stderr[-500:]
    assert sorted(p.name for p in root.iterdir()) == before
    outside = [p for p in root.rglob("*") if settings.model_repository not in p.parents
               and p.name in {".push.lock", "traffic.json"}]
    assert outside == []


def test_a_user_tower_canary_or_shadow_is_refused(settings, triton, tmp_path: Path) -> None:
    """The user tower serves one version at a time (with its index): a canary or shadow of it is
    refused rather than reported at N% and never served."""
    registry = ModelRegistry(settings.model_repository)
    art = _live_artifact(registry, "user_tower", tmp_path / "tower")
    before = _snapshot(settings.model_repository)
    for kw in ({"canary_percent": 10.0}, {"shadow_percent": 10.0}):
        with pytest.raises(PushRefusedError, match="user tower"):
            push(registry, "user_tower", art, FeatureTables.load(settings.marketplace_path),
                 TritonClient(triton.grpc_url, triton.key), **kw)
    assert _snapshot(settings.model_repository) == before


class _Narrow(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, item_cat: torch.Tensor, item_num: torch.Tensor, item_dense: torch.Tensor) -> torch.Tensor:
        return self.inner(item_cat, item_num, item_dense)[:, :8]


@pytest.mark.parametrize(("kind", "reason"), [("no_item_tower", "must carry its item tower"),
                                              ("garbage_item_tower", "does not load"),
                                              ("narrow_item_tower", "must match")])
def test_a_user_tower_without_a_sound_item_tower_is_refused(kind: str, reason: str, settings, triton,
                                                            tmp_path: Path) -> None:
    """Items added while serving are embedded with the live user tower's item tower, so a push
    must carry one that loads and embeds items into the user tower's space."""
    registry = ModelRegistry(settings.model_repository)
    art = _live_artifact(registry, "user_tower", tmp_path / "tower")
    if kind == "no_item_tower":
        (art / "item_tower.pt").unlink()
    elif kind == "garbage_item_tower":
        (art / "item_tower.pt").write_bytes(b"not a model")
    else:
        torch.jit.script(_Narrow(torch.jit.load(str(art / "item_tower.pt")))).save(str(art / "item_tower.pt"))
    before = _snapshot(settings.model_repository)
    with pytest.raises(PushRefusedError, match=reason):
        push(registry, "user_tower", art, FeatureTables.load(settings.marketplace_path), TritonClient(triton.grpc_url, triton.key))
    assert _snapshot(settings.model_repository) == before
