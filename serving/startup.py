"""What ``rankserve serve`` checks before it starts anything, and the screen it shows once serving.

Owns: the supported Python versions (the mirror of pyproject's ``requires-python``, checked
before anything else imports), the checks that the configured ports are free and that a configured
Ray cluster answers, where a command's log file goes, and the start-up summary (data and model
versions with their quality, the chosen backends, the scenarios, the addresses, the example
request). Must not touch: starting or stopping servers
(the CLI's), ranking. Imports only the standard library and ``serving.errors`` at the top, so
that an unsupported Python reaches :func:`check_python` before anything fails to import.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.errors import ConfigError, PortInUseError, SetupError, UnsupportedPythonError

if TYPE_CHECKING:
    from serving.config import Settings

__all__ = ["SUPPORTED_PYTHON", "check_ports", "check_python", "check_ray_address", "example_curl", "new_log_path", "summary_lines"]

# pyproject.toml: requires-python = ">=3.10,<3.14" (tests/unit/test_startup.py keeps them equal)
SUPPORTED_PYTHON = ((3, 10), (3, 14))
_KEEP_LOGS = 20


def check_python(version: Sequence[int] | None = None) -> None:
    """Refuse a Python outside ``SUPPORTED_PYTHON`` (default: the running one).

    Raises:
        UnsupportedPythonError: naming the versions rankserve runs on and how to pick one.
    """
    v = tuple(sys.version_info[:3] if version is None else version)
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED_PYTHON
    if SUPPORTED_PYTHON[0] <= v[:2] < SUPPORTED_PYTHON[1]:
        return
    shown = ".".join(str(x) for x in v)
    raise UnsupportedPythonError(
        f"this is Python {shown} ({sys.executable}); rankserve runs on Python {lo_major}.{lo_minor} to "
        f"{hi_major}.{hi_minor - 1}",
        hint=f"make a virtual environment with a supported Python, e.g. make serve PYTHON=python3.{hi_minor - 1}")


def check_ports(settings: Settings) -> None:
    """The HTTP port and, when on, the gRPC port are free on ``settings.host``: checked before
    anything starts, so that a port in use stops start-up at once with the setting to change.

    Raises:
        PortInUseError: naming the port, who holds it (where the system says) and the setting.
        ConfigError: the address cannot be listened on at all.
    """
    from serving.net import port_holder, port_in_use

    wanted = [("HTTP", settings.port, "RANKSERVE_PORT")]
    if settings.grpc_port:
        wanted.append(("gRPC", settings.grpc_port, "RANKSERVE_GRPC_PORT"))
    taken = {port for _, port, _ in wanted}
    for what, port, setting in wanted:
        try:
            in_use = port_in_use(settings.host, port)
        except OSError as err:
            raise ConfigError(f"cannot listen on {settings.host}:{port} for {what}: {err.strerror}",
                              hint=f"set {setting} to a port above 1023, or RANKSERVE_HOST to an address of "
                                   "this machine") from err
        if in_use:
            holder = port_holder(port)
            spare = next(p for p in range(port + 1, 65536) if p not in taken and not port_in_use(settings.host, p))
            raise PortInUseError(
                f"the {what} port {settings.host}:{port} is in use" + (f" by {holder}" if holder else ""),
                hint=f"set {setting} to a free port (e.g. {setting}={spare} make serve) or stop that process")


# Ray's default ports: a bare host:port is a cluster's GCS, ray://host:port its client server
_RAY_CLIENT_PORT = 10001
_RAY_GCS_PORT = 6379


def check_ray_address(settings: Settings, timeout_s: float = 3.0) -> None:
    """A configured Ray cluster answers on its address (``local`` and ``auto`` are Ray's to
    resolve): checked before anything starts, since ``ray.init`` retries an address that nothing
    answers on for minutes.

    Raises:
        ConfigError: the address cannot be parsed.
        SetupError: nothing accepts a connection there within ``timeout_s``.
    """
    import socket

    address = settings.ray_address.strip()
    if address in ("", "local", "auto"):
        return
    rest, default_port = (address[len("ray://"):], _RAY_CLIENT_PORT) if address.startswith("ray://") else (
        address, _RAY_GCS_PORT)
    host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", str(default_port))
    try:
        port = int(port_text)
        if not host or not 0 < port < 65536:
            raise ValueError(port_text)
    except ValueError as err:
        raise ConfigError(f"RANKSERVE_RAY_ADDRESS={address!r} is not a Ray address",
                          hint="use host:port (a cluster's GCS), ray://host:port, auto, or local to start "
                               "one on this machine") from err
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout_s):
            pass
    except OSError as err:
        why = f"no answer within {timeout_s:g} s" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise SetupError(f"no Ray cluster answers at {address} ({why.lower()})",
                         hint="start that cluster (ray start --head) or set RANKSERVE_RAY_ADDRESS=local to "
                              "start one on this machine") from err


def new_log_path(log_dir: Path, command: str) -> Path:
    """A fresh log file for one run of ``command`` under ``log_dir``; the oldest beyond the
    newest 20 of that command are removed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    old = sorted(log_dir.glob(f"{command}-*.log"), key=lambda p: p.stat().st_mtime)
    for stale in old[: max(0, len(old) - (_KEEP_LOGS - 1))]:
        stale.unlink(missing_ok=True)
    return log_dir / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def example_curl(settings: Settings, user_id: int | str | None = None) -> str:
    """A request to try, for ``user_id`` (the demo's user 42 when none is given); ``'`` in a text id
    is quoted for the shell."""
    body = json.dumps({"user_id": 42 if user_id is None else user_id, "k": 5}, ensure_ascii=False).replace("'", "'\\''")
    key = " -H \"Authorization: Bearer $RANKSERVE_API_KEY\"" if settings.auth_mode == "keys" else ""
    return (f"curl -s{'k' if settings.tls_cert_file else ''} -X POST {settings.api_url}/v1/rank "
            f"-H 'content-type: application/json'{key} -d '{body}'")


def _auth(settings: Settings) -> str:
    """The access rule in one line."""
    if settings.auth_mode == "off":
        where = "loopback only" if settings.auth is None else f"{settings.host}, RANKSERVE_AUTH=off"
        return f"off: no API keys ({where}; RANKSERVE_AUTH=keys asks for them)"
    from serving.auth import list_keys

    try:
        roles = [e.role for e in list_keys(settings.keys_file) if not e.name.startswith("serve-")]
    except Exception:  # noqa: BLE001 - the screen reports; the replicas refuse a damaged file themselves
        return f"API keys, but {settings.keys_file} is damaged"
    if not roles:
        return "API keys, none made yet: rankserve keys add NAME --role rank"
    return (f"API keys ({roles.count('rank')} rank, {roles.count('admin')} admin): 'Authorization: Bearer <key>' "
            "(rankserve keys add NAME --role rank)")


def _live(models: dict[str, dict[str, Any]], name: str) -> tuple[int | None, str]:
    """The live version of ``name`` and how its traffic splits, e.g. ``(1, "ranker v1, canary v2 10%")``."""
    traffic = models.get(name, {}).get("traffic") or {}
    live = traffic.get("live")
    words = f"{name} v{live}" if live is not None else f"{name} (not served)"
    for role in ("canary", "shadow"):
        other = traffic.get(role)
        if other:
            words += f", {role} v{other['version']} {other['percent']:g}%"
    return live, words


def _quality(build: dict[str, Any], models: dict[str, dict[str, Any]], ranker: int | None,
             tower: int | None) -> str:
    """AUC of the live ranker (its own figures, else the build's) and the index's recall@500
    (the build's, when the live user tower is the one built)."""
    q = dict(build.get("quality") or {})
    for v in models.get("ranker", {}).get("versions", []):
        if v.get("version") == ranker and v.get("quality"):
            q = {**q, **v["quality"]}
    parts = []
    if "auc" in q:
        parts.append(f"AUC {q['auc']:.3f}" + (f" (oracle {q['oracle_auc']:.3f})" if "oracle_auc" in q else ""))
    if q.get("recall_at_500") is not None and tower == (build.get("versions") or {}).get("user_tower"):
        parts.append(f"recall@500 {q['recall_at_500']:.3f}")
        if "ndcg_at_20" in q:
            parts.append(f"NDCG@20 {q['ndcg_at_20']:.3f}")
    return " · ".join(parts)


def _scenarios(view: dict[str, Any]) -> str:
    """``GET /v1/scenarios`` in one line: each scenario at its version, the default marked, the
    context it needs, and those the repository holds but this server refused."""
    words = []
    for sc in view.get("scenarios", []):
        needs = f" (needs {', '.join(sc['needs'])})" if sc.get("needs") else ""
        default = " (default)" if sc["name"] == view.get("default") else ""
        words.append(f"{sc['name']} v{sc['version']}{default}{needs}")
    refused = view.get("refused") or {}
    if refused:
        words.append("refused: " + ", ".join(sorted(refused)))
    return " · ".join(words)


def _backends(settings: Settings, served: dict[str, Any], triton_url: str) -> str:
    from serving.triton.config import read_config

    faiss = served.get("faiss") or {}
    index = f"FAISS {'GPU' if faiss.get('on_gpu') else 'CPU'}" + (f" ({faiss['kind']})" if faiss.get("kind") else "")
    if settings.triton_url:
        triton = f"Triton at {settings.triton_url} (not started here)"
    else:
        try:
            groups = read_config(settings.model_repository, settings.ranker_model).instance_group
            kind = groups[0].kind if groups else 0
            name = {1: "GPU", 2: "CPU"}.get(int(kind), "auto")
        except (OSError, ValueError):
            name = "?"
        triton = f"Triton embedded, {name} instances (gRPC {triton_url})"
    return f"crossing {served.get('cross_backend', '?')} · {index} · {triton}"


def summary_lines(settings: Settings, build: dict[str, Any], served: dict[str, Any], *, triton_url: str,
                  log_path: Path | None) -> list[tuple[str, str]]:
    """The summary screen as (label, text) rows.

    Args:
        build: the build's summary (``build.json``).
        served: ``GET /v1/models`` of the running service, with ``GET /v1/scenarios`` under
            ``scenarios`` (empty when it did not answer).
        triton_url: the Triton the replicas call.
        log_path: where third-party output went (``None``: on this terminal).
    """
    models = {m["name"]: m for m in served.get("models", [])}
    ranker, ranker_words = _live(models, settings.ranker_model)
    tower, tower_words = _live(models, settings.user_tower_model)
    cfg = build.get("config") or {}
    built = f", built {str(build['built_at'])[:10]}" if build.get("built_at") else ""
    ctr = f"click rate {build['ctr']:.1%}" if build.get("ctr") is not None else "click rate ?"
    if build.get("data_set"):
        impressions = f"{build['impressions']:,} impressions, " if build.get("impressions") is not None else ""
        data = (f"data set {build['data_set']} v{build.get('version')}: {cfg.get('n_items', 0):,} items, "
                f"{cfg.get('n_users', 0):,} users, {impressions}{ctr}, imported {str(build.get('built_at'))[:10]}")
    else:
        data = (f"data seed {build.get('seed')}: {cfg.get('n_items', 0):,} items, {cfg.get('n_users', 0):,} users, "
                f"{ctr}{built}")
    quality = _quality(build, models, ranker, tower)
    base = settings.api_url
    rows = [
        ("models", " · ".join(x for x in (data, ranker_words, tower_words, quality) if x)),
        ("backends", _backends(settings, served, triton_url) if served else "(the service did not answer /v1/models)"),
        ("scenarios", _scenarios(served.get("scenarios") or {}) or "(the service did not answer /v1/scenarios)"),
        ("HTTP", f"{base}/v1/rank  ({settings.ingress} ingress, {settings.num_replicas} replica(s))"),
        ("gRPC", f"{settings.host}:{settings.grpc_port}  rankserve.v1.Ranker/Rank" if settings.grpc_port
         else "off (RANKSERVE_GRPC_PORT=9000 turns it on)"),
        ("metrics", f"{base}/metrics  (Prometheus: one scrape sums every replica)"),
        ("auth", _auth(settings)),
        ("logs", f"{log_path}  (--verbose or RANKSERVE_VERBOSE=1 shows them here)" if log_path
         else "on this terminal (verbose)"),
    ]
    return rows
