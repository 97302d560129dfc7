"""``rankserve`` command line: build, serve, bench, capacity, the model repository workflow, catalogue
changes, scenarios and data sets.

Owns: argument parsing, start-up contexts (Triton configured or embedded, Ray, Serve), what
``build`` and ``serve`` show on the terminal (progress, the summary screen; everything else in a
log file unless verbose) and turning errors into one or two lines that say what to do, with the
error's exit status (no traceback unless verbose). Must not touch: ranking logic.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Standard library and serving.errors / serving.startup / serving.stopping only: an unsupported Python must reach
# check_python() in main() before anything that needs a newer one is imported.
from serving.errors import ConfigError, RankserveError
from serving.startup import check_python, example_curl
from serving.stopping import StopSignals

if TYPE_CHECKING:
    import httpx

    from serving.config import Settings
    from serving.triton.client import TritonEndpoint

__all__ = ["main"]

log = logging.getLogger("rankserve")
_OWN_LOGGERS = ("rankserve", "serving", "training", "kernels", "loadtest", "benchmarks")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def at_scale(settings: Settings, items: int | None, users: int | None) -> Settings:
    """The settings of a marketplace of ``items`` items and ``users`` users: its own data and model
    repository under ``<data_dir>/scales/``, so a large build never overwrites the default one."""
    if items is None and users is None:
        return settings
    home = settings.data_dir / "scales" / f"items{items or 'default'}-users{users or 'default'}"
    return settings.model_copy(update={"data_dir": home, "model_repository": home / "model_repository"})


def _build(settings: Settings, *, items: int | None = None, users: int | None = None, force: bool = False,
           index: bool = True) -> dict[str, Any]:
    """The build's summary: the cache when it can be used, else a new build. The cache and this
    machine's room are checked before torch or FAISS is loaded."""
    from dataclasses import asdict

    from training.data import MarketConfig
    from training.preflight import plan, scenarios_missing

    data_dir = settings.marketplace_path.parent
    config = asdict(MarketConfig().sized(items=items, users=users))
    cached = plan(data_dir, settings.model_repository, config=config, index=index, force=force)
    if cached is not None and not scenarios_missing(cached, settings.model_repository):
        return {**cached, "cached": True}
    from training.build import build

    if cached is not None:  # a cache from before scenarios: the build adds them, without training again
        return build(data_dir, settings.model_repository, items=items, users=users, index=index, settings=settings)
    return build(data_dir, settings.model_repository, items=items, users=users, force=True, index=index,
                 settings=settings)


def _built(settings: Settings) -> dict[str, Any]:
    """The summary of what is built (for ``serve --no-build``), checked like a cache about to be used."""
    from serving.errors import BuildCacheError
    from training.preflight import read_summary, verify_cache

    data_dir = settings.marketplace_path.parent
    summary = read_summary(data_dir)
    if summary is None:
        raise BuildCacheError(f"nothing is built in {data_dir}", hint="run rankserve build, or serve without --no-build")
    verify_cache(data_dir, settings.model_repository)
    return summary


def api_get(settings: Settings, path: str, *, timeout_s: float) -> httpx.Response:
    """``GET path`` of the running server on this machine, as the command's own call: with its API
    key when it has one, over TLS when the server serves it (a loopback server's certificate is
    not checked: it is this machine's own server, and a self-signed certificate names no address).

    Raises:
        httpx.HTTPError: it does not answer.
    """
    import httpx

    from serving.net import is_loopback

    headers = {"authorization": f"Bearer {settings.api_key.get_secret_value()}"} if settings.api_key else {}
    verify = not (settings.tls_cert_file and (is_loopback(settings.api_url) or settings.host in ("0.0.0.0", "::")))
    return httpx.get(settings.api_url + path, headers=headers, timeout=timeout_s, verify=verify)


@contextlib.contextmanager
def serve_key(settings: Settings) -> Iterator[Settings]:
    """With auth=keys, an admin key of this ``serve`` process for its own calls (the screen's
    views, the drain's queue depth), added at start and revoked at stop; ``settings`` carry it."""
    if settings.auth_mode != "keys":
        yield settings
        return
    import socket

    from pydantic import SecretStr

    from serving.auth import add_key, list_keys, revoke_key
    from serving.files import pid_alive

    path = settings.keys_file
    for entry in list_keys(path):  # those of a serve that did not stop cleanly
        pid = entry.name.rsplit("-", 1)[-1]
        if entry.name.startswith(f"serve-{socket.gethostname()}-") and pid.isdigit() and not pid_alive(int(pid)):
            revoke_key(path, entry.name)
    name = f"serve-{socket.gethostname()}-{os.getpid()}"
    key = add_key(path, name, "admin")
    try:
        yield settings.model_copy(update={"api_key": SecretStr(key)})
    finally:
        with contextlib.suppress(RankserveError):
            revoke_key(path, name)


@contextlib.contextmanager
def triton_endpoint(settings: Settings) -> Iterator[TritonEndpoint]:
    """Yield Triton's gRPC address and key: the configured one, or an embedded server started here
    and restarted whenever it goes down (its address and key also in ``endpoint.json``, readable by
    this user only, for the commands that load models into it)."""
    from serving.triton.client import TritonEndpoint

    if settings.triton_url:
        log.info("using Triton at %s (nothing launched)", settings.triton_url)
        yield TritonEndpoint(settings.triton_url, settings.triton_key.get_secret_value() if settings.triton_key
                             else None)
        return
    from serving.files import atomic_write_text
    from serving.repository.loading import startup_loader
    from serving.repository.registry import ModelRegistry
    from serving.triton.process import TritonProcess
    from serving.triton.supervisor import TritonSupervisor

    registry = ModelRegistry.of(settings)
    endpoint_file = settings.triton_runtime_dir / "endpoint.json"
    with TritonProcess(settings.model_repository, runtime_dir=settings.triton_runtime_dir,
                       binary=settings.triton_bin, kind=settings.triton_kind,
                       torch_threads=settings.triton_torch_threads,
                       load=startup_loader(registry, settings.triton_keep_versions)) as triton, \
            TritonSupervisor(triton):
        log.info("embedded Triton ready at %s (metrics %s), supervised", triton.grpc_url, triton.metrics_url)
        atomic_write_text(endpoint_file, json.dumps({"grpc_url": triton.grpc_url, "key": triton.key,
                                                     "pid": os.getpid()}), mode=0o600)
        try:
            yield TritonEndpoint(triton.grpc_url, triton.key)
        finally:
            endpoint_file.unlink(missing_ok=True)


def running_triton(settings: Settings) -> TritonEndpoint | None:
    """The configured Triton, or the embedded one a running ``rankserve serve`` started (None: none)."""
    from serving.files import pid_alive
    from serving.triton.client import TritonEndpoint

    if settings.triton_url:
        return TritonEndpoint(settings.triton_url, settings.triton_key.get_secret_value() if settings.triton_key
                              else None)
    endpoint_file = settings.triton_runtime_dir / "endpoint.json"
    try:
        info = json.loads(endpoint_file.read_text())
        if pid_alive(int(info["pid"])):
            return TritonEndpoint(str(info["grpc_url"]), info.get("key"))
    except (OSError, KeyError, ValueError):
        pass
    return None


@contextlib.contextmanager
def serving_app(settings: Settings, stop: StopSignals | None = None) -> Iterator[TritonEndpoint]:
    """Triton (configured or embedded), Ray, the ingress (``settings.ingress`` on ``settings.port``
    and ``settings.grpc_port``) and the rankserve application, up for the ``with`` body, which
    gets the Triton URL the replicas call; Ray and the embedded Triton stop after it (Serve's own
    graceful stop skipped when ``stop`` was forced)."""
    from ray import serve

    from serving.app import build_app
    from serving.ray_runtime import Ingress, init_ray, shutdown_ray, start_serve
    from serving.service import drain_flag

    ingress = Ingress.from_settings(settings)
    drain_flag(settings).unlink(missing_ok=True)  # left by a server that did not stop cleanly
    with triton_endpoint(settings) as triton:
        try:
            init_ray(settings.ray_address, ingress=ingress, token_file=settings.ray_token_file)
            if stop is not None:  # from here on a Ctrl-C drains what is starting rather than abandoning it
                stop.serving()
            start_serve(ingress)
            serve.run(build_app(settings, triton), name="rankserve", route_prefix="/")
            yield triton
        finally:
            forced = stop is not None and stop.forced
            shutdown_ray(serve_timeout_s=0 if forced else settings.drain_timeout_s + 5)


def _sweep_temporary(settings: Settings) -> None:
    """Remove what writers that crashed left half-written in the repository and the state folder."""
    from serving.files import sweep_temporary

    for folder in (settings.model_repository, settings.nodes_dir):
        swept = sweep_temporary(folder)
        if swept:
            log.info("removed %d temporary file(s) left by a crashed writer under %s", len(swept), folder)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from serving.config import DEMO_DATA
    from serving.ray_runtime import Ingress
    from serving.startup import check_ports, check_ray_address
    from serving.terminal import console, status

    for pid in Ingress.from_settings(settings).stop_orphans():
        log.warning("stopped HAProxy pid %d, left on port %d by a rankserve that did not stop cleanly", pid,
                    settings.port)
    check_ports(settings)  # before anything starts: a taken port stops start-up at once
    _sweep_temporary(settings)
    check_ray_address(settings)  # and a cluster that does not answer, instead of Ray's long retries
    build = _dataset_summary(settings) if settings.data != DEMO_DATA else _built(settings) if args.no_build \
        else _build(settings)
    stop = StopSignals()
    stop.install()
    out = console()
    try:
        with contextlib.ExitStack() as running:
            settings = running.enter_context(serve_key(settings))
            with status("starting Triton, Ray and the rankserve replicas ..."):
                triton = running.enter_context(serving_app(settings, stop))
                served = _served_view(settings, stop)
            if not stop.asked:
                _show_summary(settings, build, served, triton.url, args.log_path)
            stop.wait()
            out.print(f"stopping: draining requests (at most {settings.drain_timeout_s:g} s), then HAProxy, Ray "
                      "and Triton ... (Ctrl-C again stops at once)")
            _drain(settings)
    except KeyboardInterrupt:  # ForcedStop, or Ray's own KeyboardInterrupt when it came inside ray.get
        if not stop.forced:
            raise
        out.print("stopped at once, without waiting for requests in flight: nothing of rankserve is left running")
        return 130
    finally:
        stop.restore()
    out.print("stopped: nothing of rankserve is left running")
    return 0


def _dataset_summary(settings: Settings) -> dict[str, Any]:
    """An imported data set about to be served: checked (imported, trained), its default scenarios
    written where absent, nothing else written (never the demo's build); its sizes for the summary."""
    from serving.pipeline.assemble import load_tables
    from serving.repository.datasets import check_servable, dataset_facts, install_default_scenarios

    check_servable(settings)
    tables = load_tables(settings)
    written = install_default_scenarios(settings, tables)
    if written:
        log.info("wrote the default scenarios %s into %s", written, settings.model_repository)
    return {**dataset_facts(settings), "example_user": next(iter(tables.user_ids[:1].tolist()), None)}


def _served_view(settings: Settings, stop: StopSignals, timeout_s: float = 60.0) -> dict[str, Any]:
    """``GET /v1/models`` (with ``GET /v1/scenarios`` under ``scenarios``) through the ingress once
    the service is ready (``{}`` if it does not answer within ``timeout_s``, or a stop was asked:
    the summary then says so)."""
    import httpx

    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end and not stop.asked:
        try:
            if api_get(settings, "/readyz", timeout_s=5).status_code == 200:
                view: dict[str, Any] = api_get(settings, "/v1/models", timeout_s=10).json()
                view["scenarios"] = api_get(settings, "/v1/scenarios", timeout_s=10).json()
                return view
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)
    return {}


def _show_summary(settings: Settings, build: dict[str, Any], served: dict[str, Any], triton_url: str,
                  log_path: Path | None) -> None:
    """The start-up screen: what serves, on which backends, where, and a request to try."""
    from rich.text import Text

    from serving.startup import summary_lines
    from serving.terminal import console

    out = console()
    ready = "is serving" if served else "started, but did not answer /readyz within 60 s"
    out.print(f"\n[bold]rankserve {ready}[/] on [bold]http://{settings.host}:{settings.port}[/]  "
              "(Ctrl-C stops everything)\n")
    for label, text in summary_lines(settings, build, served, triton_url=triton_url, log_path=log_path):
        out.print(Text.assemble((f"  {label:<10}", "bold"), text), soft_wrap=True)
    out.print(Text.assemble(("\n  try\n", "bold"), f"  {example_curl(settings, build.get('example_user'))}\n"), soft_wrap=True)


def _drain(settings: Settings) -> None:
    """Tell the replicas to refuse new requests (503) and wait until those in flight are answered,
    then close the ingress's listeners, letting it answer what it still holds; all within
    ``settings.drain_timeout_s`` (at least 1 s for the ingress)."""
    import httpx

    from serving.metrics import metric_values
    from serving.ray_runtime import Ingress
    from serving.service import drain_flag

    flag = drain_flag(settings)
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()
    t_end = time.monotonic() + settings.drain_timeout_s
    try:
        while time.monotonic() < t_end:
            time.sleep(0.1)
            try:
                text = api_get(settings, "/metrics", timeout_s=1).text
            except httpx.HTTPError:
                break
            if metric_values(text, ("rankserve_queue_depth",)).get("rankserve_queue_depth", 0) == 0:
                break
        # after the replicas, the listeners: Ray's shutdown would kill HAProxy with a request in it
        Ingress.from_settings(settings).stop_accepting(max(1.0, t_end - time.monotonic()))
    finally:
        flag.unlink(missing_ok=True)


def cmd_build(settings: Settings, args: argparse.Namespace) -> int:
    from serving.terminal import console

    scaled = at_scale(settings, args.items, args.users)
    summary = _build(scaled, items=args.items, users=args.users, force=args.force, index=args.index)
    summary["data_dir"], summary["model_repository"] = str(scaled.data_dir), str(scaled.model_repository)
    if args.json:
        console().print(json.dumps(summary, indent=2, default=str), markup=False, highlight=False, soft_wrap=True)
        return 0
    q = summary.get("quality", {})
    versions = ", ".join(f"{m} v{v}" for m, v in summary.get("versions", {}).items())
    how = "already built" if summary.get("cached") else f"built in {summary.get('build_s', 0):g} s"
    recall = q.get("recall_at_500")
    console().print(f"{how}: {q.get('n_items', 0):,} items, {q.get('n_users', 0):,} users, click rate "
                    f"{summary.get('ctr', float('nan')):.1%} · {versions} · AUC {q.get('auc', float('nan')):.3f} "
                    f"(oracle {q.get('oracle_auc', float('nan')):.3f}) · ECE {q.get('ece', float('nan')):.4f} · "
                    f"recall@500 {'-' if recall is None else f'{recall:.3f}'} · NDCG@20 "
                    f"{q.get('ndcg_at_20', float('nan')):.3f}  ({scaled.marketplace_path.parent / 'build.json'})",
                    markup=False, highlight=False, soft_wrap=True)
    scenarios = q.get("scenarios") or {}
    if scenarios:
        console().print("scenarios, NDCG@20 against the oracle restricted to each one's candidate rule (random "
                        "order of its candidates; of the oracle's items): " + " · ".join(
                            f"{n} v{r['version']} {r['ndcg_at_20']:.3f} ({r.get('ndcg_at_20_random_candidates', 0):.3f}; "
                            f"{r['ndcg_at_20_random']:.3f})" for n, r in sorted(scenarios.items())),
                        markup=False, highlight=False, soft_wrap=True)
    return 0


def _measured(settings: Settings, *, items: int | None = None, users: int | None = None) -> Settings:
    """The settings of the data set a measuring command loads, ready to serve: the demo, built
    first if need be (at ``items`` x ``users``: into its own folders, :func:`at_scale`); or an
    imported data set, checked (imported and trained; nothing is built for it) with its default
    scenarios written where absent, as ``serve --data`` does.

    Raises:
        ConfigError: demo sizes for another data set; a data set not imported or not trained
            (the hint names the command to run).
    """
    from serving.config import DEMO_DATA

    if settings.data == DEMO_DATA:
        settings = at_scale(settings, items, users)
        _build(settings, items=items, users=users)
        return settings
    if items is not None or users is not None:
        raise ConfigError(f"--items and --users size the demo marketplace that rankserve builds; the data set "
                          f"{settings.data!r} has the size it was imported with",
                          hint=f"drop them to measure {settings.data}, or measure the demo at that size (--data demo)")
    _dataset_summary(settings)
    return settings


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from benchmarks.bench import run_bench, run_log_cost
    from serving.ray_runtime import shutdown_ray
    from serving.startup import check_ray_address

    check_ray_address(settings)  # before a build of minutes, not after it
    settings = _measured(settings, items=args.items, users=args.users)
    levels = [int(x) for x in args.levels.split(",") if x]
    with triton_endpoint(settings) as triton:
        try:
            if args.log_cost:
                run_log_cost(settings, triton, levels=levels, duration_s=args.duration_s, out_dir=args.out)
            else:
                with _scratch_log(settings) as run_settings:
                    run_bench(run_settings, triton, levels=levels, duration_s=args.duration_s, out_dir=args.out)
        finally:
            shutdown_ray()
    return 0


def _serving(settings: Settings) -> str:
    """``, serving the data set NAME`` for an imported data set's unit; nothing for the demo's."""
    from serving.config import DEMO_DATA

    return "" if settings.data == DEMO_DATA else f", serving the data set {settings.data}"


@contextlib.contextmanager
def _scratch_log(settings: Settings) -> Iterator[Settings]:
    """``settings`` with the served log in a scratch folder, removed afterwards: a measuring
    command's own server never adds its synthetic answers to the data set's log (``log join``
    would read them as impressions nobody clicked)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="rankserve-measure-log-"))
    try:
        yield settings.model_copy(update={"log_dir": folder})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def cmd_capacity(settings: Settings, args: argparse.Namespace) -> int:
    from benchmarks.capacity import run_capacity
    from serving.config import DEMO_DATA
    from serving.net import QUIET_PORTS, free_port, is_loopback
    from serving.repository.datasets import check_imported

    if args.url:
        if not is_loopback(args.url):
            print("rankserve capacity: only loopback targets are load-tested", file=sys.stderr)
            return 2
        if settings.data != DEMO_DATA:
            check_imported(settings)  # its requests are drawn from it here
        run_capacity(args.url.rstrip("/"), settings, args, unit=f"the rankserve at {args.url}{_serving(settings)}")
        return 0
    settings = _measured(settings)
    port = free_port(QUIET_PORTS)
    unit = (f"embedded default on this machine ({os.cpu_count()} CPU cores, {settings.num_replicas} Serve "
            f"replica(s), one Triton, {_gpu_words()}; load generator on the same machine){_serving(settings)}")
    with _scratch_log(settings.model_copy(update={"port": port, "grpc_port": 0})) as run_settings, \
            serving_app(run_settings):
        run_capacity(f"http://127.0.0.1:{port}", settings, args, unit=unit)
    return 0


def cmd_freshness(settings: Settings, args: argparse.Namespace) -> int:
    from benchmarks.freshness import repository_copy, run_freshness
    from serving.net import QUIET_PORTS, free_port

    settings = _measured(settings, items=args.items)
    port = free_port(QUIET_PORTS)
    scratch = repository_copy(settings.model_repository)  # the benchmark's changes stay out of the real one
    run_settings = settings.model_copy(update={"port": port, "grpc_port": 0, "model_repository": scratch,
                                               "log_dir": scratch.parent / "log"})
    unit = (f"embedded default on this machine ({os.cpu_count()} CPU cores, {settings.num_replicas} Serve "
            f"replica(s), {_gpu_words()}), scratch copy of the model repository{_serving(settings)}")
    try:
        with serving_app(run_settings):
            run_freshness(f"http://127.0.0.1:{port}", run_settings, args, unit=unit)
    finally:
        import shutil

        shutil.rmtree(scratch.parent, ignore_errors=True)
    return 0


def cmd_scenario_freshness(settings: Settings, args: argparse.Namespace) -> int:
    from benchmarks.freshness import repository_copy
    from benchmarks.scenario_freshness import run_scenario_freshness
    from serving.net import QUIET_PORTS, free_port

    settings = _measured(settings)
    port = free_port(QUIET_PORTS)
    scratch = repository_copy(settings.model_repository)  # the benchmark's scenario versions stay out of the real one
    run_settings = settings.model_copy(update={"port": port, "grpc_port": 0, "model_repository": scratch,
                                               "num_replicas": args.replicas, "log_dir": scratch.parent / "log"})
    unit = (f"embedded default on this machine ({os.cpu_count()} CPU cores, {args.replicas} Serve replica(s), "
            f"{_gpu_words()}), scratch copy of the model repository{_serving(settings)}")
    try:
        with serving_app(run_settings):
            rep = run_scenario_freshness(f"http://127.0.0.1:{port}", run_settings, args, unit=unit)
    finally:
        import shutil

        shutil.rmtree(scratch.parent, ignore_errors=True)
    return 0 if rep["load"]["failed"] == 0 else 1  # a failed request during applies is a failed run


def cmd_index_bench(settings: Settings, args: argparse.Namespace) -> int:
    from benchmarks.index_bench import run_index_bench

    settings = _measured(settings, items=args.items)
    run_index_bench(settings, args)
    return 0


def cmd_chaos(settings: Settings, args: argparse.Namespace) -> int:
    from benchmarks.chaos import resolve_capacity, run_chaos

    settings = _measured(settings)
    args.capacity_rps = resolve_capacity(args, settings.data)
    with _scratch_log(settings) as run_settings:
        outcomes = run_chaos(run_settings, args)
    return 0 if outcomes else 1


def _gpu_words() -> str:
    import torch

    return f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"


class _NoTriton:
    """Stands for Triton when none is running: versions load when the server next starts."""

    def load_model(self, name: str, config: str | None = None) -> None:
        log.warning("no running Triton found: %s will be loaded when rankserve serve starts", name)

    def model_ready(self, name: str, version: str = "") -> bool:
        return True


def cmd_push(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from serving.data.store import DataSetStore
    from serving.pipeline.assemble import load_tables
    from serving.repository.declared import is_declared
    from serving.repository.push import ModelLoader, push
    from serving.repository.registry import ModelRegistry

    endpoint = running_triton(settings)
    triton: ModelLoader = _NoTriton() if endpoint is None else endpoint.client()
    artifact = Path(args.artifact)
    impressions = DataSetStore.of(settings).dataset(settings.data).impressions() if is_declared(artifact) else None
    result = push(ModelRegistry.of(settings), args.model, artifact,
                  load_tables(settings), triton,
                  canary_percent=args.canary, shadow_percent=args.shadow, version=args.version,
                  keep_others=settings.triton_keep_versions, create=args.create, impressions=impressions,
                  data_set=settings.data)
    print(json.dumps({"model": result.model, "version": result.version, "traffic": result.traffic.to_json(),
                      "checks": result.checks}, indent=2))
    return 0


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    from serving.repository.push import promote
    from serving.repository.registry import ModelRegistry

    if args.if_better:
        from serving.feedback.commands import promote_if_better

        return promote_if_better(settings, args)

    print(json.dumps(promote(ModelRegistry.of(settings), args.model).to_json()))
    return 0


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from serving.repository.push import ModelLoader, rollback
    from serving.repository.registry import ModelRegistry

    endpoint = running_triton(settings)
    triton: ModelLoader = _NoTriton() if endpoint is None else endpoint.client()
    print(json.dumps(rollback(ModelRegistry.of(settings), args.model, args.version, triton,
                              keep_others=settings.triton_keep_versions).to_json()))
    return 0


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    from serving.repository.registry import ModelRegistry
    from serving.triton.onnx import backend_of

    reg = ModelRegistry.of(settings)
    live: dict = {}
    try:

        live = api_get(settings, "/v1/models", timeout_s=3).json()
    except Exception:  # noqa: BLE001 - the server may be down; the repository still answers
        log.info("server not reachable; showing the repository only")
    served = {m["name"]: m for m in live.get("models", [])}
    rows = []
    for name in reg.models():
        t = reg.traffic(name)
        states = {v["version"]: v["state"] for v in served.get(name, {}).get("versions", [])}
        for v in reg.versions(name):
            meta = reg.meta(name, v)
            role = "live" if v == t.live else "canary" if v == t.canary_version else (
                "shadow" if v == t.shadow_version else "")
            share = 100.0 - t.canary_percent if role == "live" else t.canary_percent if role == "canary" else (
                t.shadow_percent if role == "shadow" else 0.0)
            rows.append({"model": name, "version": v, "role": role, "traffic_pct": share,
                         "state": states.get(v, "unknown (server down)" if not live else "UNAVAILABLE"),
                         "created": meta.get("created"), "quality": meta.get("quality", {}),
                         "backend": backend_of(reg.repo / name / str(v)), "validation": meta.get("validation", {}),
                         "shadow_vs_live": served.get(name, {}).get("shadow", {}).get(f"v{v}")})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'model':<12} {'ver':>4} {'role':<7} {'traffic%':>8} {'state':<12} {'created':<20} figures")
    for r in rows:
        figs = {k: v for k, v in {**r["quality"], **(r["shadow_vs_live"] or {})}.items()
                if isinstance(v, (int, float))}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(figs.items())[:6])
        print(f"{r['model']:<12} {r['version']:>4} {r['role']:<7} {r['traffic_pct']:>8.1f} {str(r['state']):<12} "
              f"{str(r['created'])[:19]:<20} {shown}")
    return 0


def cmd_items(settings: Settings, args: argparse.Namespace) -> int:
    """Block, unblock, add or update items (one atomic, versioned change), or show the catalogue.
    The demo's items are named by row and its files hold its serving columns; an imported data
    set's take the schema's ids and columns (Parquet, CSV, JSON or JSON lines)."""
    from serving.config import DEMO_DATA
    from serving.pipeline.assemble import load_tables
    from serving.repository.catalogue import ChangeLog
    from serving.repository.nodes import live_nodes

    changes = ChangeLog(settings.model_repository)
    if args.action == "status":
        cat = changes.current(load_tables(settings))
        print(json.dumps({"catalogue_version": cat.version, "items": cat.tables.n_items, "blocked": cat.n_blocked,
                          "blocked_ids": cat.tables.item_ids[cat.blocked.nonzero()[0][:50]].tolist(),
                          "nodes": {n.key: n.catalogue_version for n in live_nodes(settings.nodes_dir)}},
                         indent=2))
        return 0
    if args.action in ("add", "update") and len(args.targets) != 1:
        kinds = "JSON array or JSON lines" if settings.data == DEMO_DATA else "Parquet, CSV, JSON or JSON lines"
        raise ConfigError(f"rankserve items {args.action} takes one FILE ({kinds} of items)")
    if settings.data == DEMO_DATA:
        out = _demo_items_change(changes, load_tables(settings), args.action, args.targets)
    else:
        out = _dataset_items_change(settings, changes, args.action, args.targets)
    print(json.dumps(out))
    return 0


def _demo_items_change(changes: Any, base: Any, action: str, targets: list[str]) -> dict[str, Any]:
    """The demo's change (row ids, its serving columns in JSON); what ``items`` prints."""
    from serving.repository.catalogue import read_item_rows

    if action in ("block", "unblock"):
        change = changes.append(base, **{action: targets})
    else:
        change = changes.append(base, **{action: read_item_rows(targets[0])})
    return {"catalogue_version": change.version, "blocked": list(change.block), "unblocked": list(change.unblock),
            "added_ids": list(change.added_ids), "updated_ids": [r["item_id"] for r in change.update]}


def _dataset_items_change(settings: Settings, changes: Any, action: str, targets: list[str]) -> dict[str, Any]:
    """An imported data set's change in its schema's terms, encoded with its live version's
    encoding; what ``items`` prints (the schema's ids)."""
    from serving.data.changes import encode_item_rows, parse_ids
    from serving.data.read import read_rows
    from serving.data.store import DataSetStore

    ds = DataSetStore.of(settings).dataset(settings.data)
    version = ds.live_version()
    tables = ds.tables(version)
    ids: dict[str, list[Any]] = {"blocked": [], "unblocked": [], "added_ids": [], "updated_ids": []}
    if action in ("block", "unblock"):
        given = parse_ids(targets, tables, action)
        change = changes.append_items(tables, **{action: given})
        ids[f"{action}ed"] = given
    else:
        rows = encode_item_rows(read_rows(Path(targets[0]), ids=[tables.schema.items.id]), tables,
                                ds.encoding(version)["items"],
                                add=action == "add")
        change = changes.append_items(tables, **{action: rows})
        ids["added_ids" if action == "add" else "updated_ids"] = list(rows.ids)
    return {"catalogue_version": change.version, **ids}


def cmd_scenarios(settings: Settings, args: argparse.Namespace) -> int:
    """Validate, apply, list or roll back scenario files (``serving.repository.scenarios``)."""
    from pathlib import Path

    from serving.errors import ScenarioRefusedError
    from serving.pipeline.assemble import load_tables
    from serving.repository.catalogue import ChangeLog
    from serving.repository.registry import ModelRegistry
    from serving.repository.scenarios import ScenarioStore

    store = ScenarioStore(settings.model_repository)
    if args.action == "list":
        print(json.dumps({"scenarios": store.listing(), "served": _served_scenarios(settings)}, indent=2))
        return 0
    if len(args.targets) != 1:
        what = "NAME" if args.action == "rollback" else "FILE"
        raise ConfigError(f"rankserve scenarios {args.action} takes one {what}")
    registry = ModelRegistry.of(settings)
    groups = ChangeLog(settings.model_repository).current(load_tables(settings)).group_counts()
    if args.action == "rollback":
        sc = store.rollback(args.targets[0], settings, registry, groups)
    else:
        path = Path(args.targets[0])
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ScenarioRefusedError(f"cannot read {path}: {err}") from err
        if args.action == "validate":
            sc = store.check(text, settings, registry, groups)
            print(json.dumps({"valid": True, "scenario": sc.name, "next_version": max(store.versions(sc.name),
                                                                                       default=0) + 1,
                              **{k: v for k, v in sc.describe().items() if k in ("needs", "limits", "ranker")}}))
            return 0
        sc = store.apply(text, settings, registry, groups)
    print(json.dumps({"scenario": sc.name, "version": sc.version, "live": True}))
    return 0


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Check every version folder of the repository against its recorded digests."""
    from serving.repository.loading import config_findings
    from serving.repository.registry import ModelRegistry
    from serving.triton.digests import verify_repository

    registry = ModelRegistry.of(settings)
    found = verify_repository(settings.model_repository)
    configs = {m: config_findings(registry, m) for m in registry.models()}
    bad = {k: v for k, v in found.items() if v}
    if args.json:
        print(json.dumps({"repository": str(settings.model_repository),
                          "versions": {k: [str(f) for f in v] for k, v in found.items()},
                          "configs": {m: list(p) for m, p in configs.items()}}, indent=2))
    else:
        for key, findings in found.items():
            print(f"{key:<20} {'ok' if not findings else 'FAILED'}")
            for f in findings:
                print(f"    {key}/{f}")
        for model, problems in configs.items():
            for problem in problems:
                print(f"{model:<20} FAILED\n    {model}/{problem}")
        failed = len(bad) + sum(1 for p in configs.values() if p)
        print(f"{len(found) - len(bad)} of {len(found)} version(s) verified in {settings.model_repository}"
              + (f"; {failed} failed: they are never loaded" if failed else ""))
    return 1 if bad or any(configs.values()) else 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """API keys: add (the key is printed once, alone on the last line), list, revoke."""
    from serving.auth import add_key, list_keys, revoke_key

    path = settings.keys_file
    if args.keys_action == "add":
        key = add_key(path, args.name, args.role)
        print(f"added key {args.name!r} with role {args.role} (only its hash is stored: this is the one time the key "
              f"is shown; every replica accepts it within a second, and RANKSERVE_AUTH=keys makes servers ask for it):")
        print(key)
        return 0
    if args.keys_action == "revoke":
        gone = revoke_key(path, args.name)
        print(f"revoked key {gone.name!r} (role {gone.role}): every replica refuses it within a second")
        return 0
    rows = [{"name": e.name, "role": e.role, "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.created))}
            for e in list_keys(path)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<32} {'role':<6} created   ({path}; auth {settings.auth_mode})")
    for r in rows:
        print(f"{r['name']:<32} {r['role']:<6} {r['created']}")
    return 0


def cmd_data(settings: Settings, args: argparse.Namespace) -> int:
    """Data sets: import NAME (checked whole, written as a new version), list."""
    from serving.data.schema import load_schema
    from serving.data.store import DataSetStore

    store = DataSetStore.of(settings)
    if args.data_action == "import":
        report = store.dataset(args.name).import_files(load_schema(Path(args.schema)), Path(args.items),
                                                       Path(args.users), Path(args.impressions))
        print("\n".join(report.lines()))
        return 0
    listing = store.listing()
    if args.json:
        print(json.dumps({"folder": str(store.root), "data_sets": listing}, indent=2))
        return 0
    if not listing:
        print(f"no data set under {store.root}: rankserve data import NAME --schema ... --items ... --users ... "
              "--impressions ... makes one")
        return 0
    print(f"{'data set':<20} {'version':>7} {'live':<4} {'created':<19} {'items':>11} {'users':>11} "
          f"{'impressions':>12} {'size':>10}")
    for ds in listing:
        if not ds["versions"]:
            print(f"{ds['name']:<20} {'-':>7} {'':<4} (no version: an import that did not finish)")
        for v in ds["versions"]:
            live = "*" if v["version"] == ds["live"] else ""
            if v.get("damaged"):
                print(f"{ds['name']:<20} {v['version']:>7} {live:<4} (its manifest does not read)")
                continue
            print(f"{ds['name']:<20} {v['version']:>7} {live:<4} {v['created'][:19].replace('T', ' '):<19} "
                  f"{v['items']:>11,} {v['users']:>11,} {v['impressions']:>12,} {_size(v['bytes']):>10}")
    print(f"({len(listing)} data set(s) under {store.root}; * the live version)")
    return 0


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    """Train a data set's default models and export them into its model repository."""
    from training.dataset_command import data_set_name, train_named

    summary = train_named(settings, data_set_name(settings, args.name, args.data), epochs=args.epochs, seed=args.seed)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    m = summary["metrics"]
    versions = ", ".join(f"{model} v{v}" for model, v in summary["versions"].items())
    print(f"{summary['data_set']} (data version {summary['data_version']}): AUC {m['auc']:.4f} · log loss "
          f"{m['log_loss']:.4f} (base rate {m['log_loss_base_rate']:.4f}) · ECE {m['ece']:.4f} · recall@500 "
          f"{m['recall_at_500']:.4f} · NDCG@20 {m['ndcg_at_20']:.4f}  on {m['holdout_impressions']:,} held-out "
          f"impressions ({m['holdout']} holdout)")
    print(f"exported {versions} to {summary['model_repository']} in {summary['seconds']:g} s")
    return 0


def cmd_features(settings: Settings, args: argparse.Namespace) -> int:
    """Write a data set's training table (the ranker's inputs of every impression) as Parquet."""
    from training.dataset_command import data_set_name, write_feature_table

    summary = write_feature_table(settings, data_set_name(settings, args.name, args.data),
                                  Path(args.ranker_features) if args.ranker_features else None, Path(args.out))
    print(f"{summary['rows']:,} rows, cat {summary['cat']} wide, dense {summary['dense']} wide "
          f"(features: {summary['features']}) written to {summary['out']}")
    return 0


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """Play the demo's users against the running server; print (and with --out write) the figures."""
    from loadtest.simulate import SimulationConfig, simulate
    from serving.net import is_loopback
    from training.data import load_built_marketplace

    url = (args.url or settings.api_url).rstrip("/")
    if not is_loopback(url):
        raise ConfigError(f"rankserve simulate only plays users against this machine's servers, not {url}")
    if args.rate <= 0 or args.duration_s <= 0 or args.k < 1 or args.bucket_s <= 0 or not 0 < args.drift_share <= 1:
        raise ConfigError("--rate, --duration-s and --bucket-s must be positive, --k at least 1, --drift-share in (0, 1]")
    cfg = SimulationConfig(rate=args.rate, duration_s=args.duration_s, drift_at_s=args.drift_at_s, seed=args.seed,
                           k=args.k, drift_share=args.drift_share, bucket_s=args.bucket_s)
    key = f"Bearer {settings.api_key.get_secret_value()}" if settings.api_key else None
    res = simulate(url, load_built_marketplace(settings.marketplace_path.parent), cfg,
                   out=Path(args.out) if args.out else None, authorization=key)
    print(json.dumps(res))
    return 0


def cmd_learn(settings: Settings, args: argparse.Namespace) -> int:
    """Fine-tune, canary, judge and promote the data set's ranker every --every-s seconds."""
    from training.dataset_command import data_set_name
    from training.learn import ServerSteps, run_loop

    if args.every_s <= 0 or (args.for_s is not None and args.for_s <= 0) or args.epochs < 1:
        raise ConfigError("--every-s and --for-s must be positive, --epochs at least 1")
    settings = settings.for_data(data_set_name(settings, args.name, args.data))
    endpoint = running_triton(settings)
    triton = _NoTriton() if endpoint is None else endpoint.client()
    steps = ServerSteps(settings, args.ranker or settings.ranker_model, triton, canary_percent=args.canary,
                        min_impressions=args.min_impressions, judge_timeout_s=args.judge_timeout_s or args.every_s,
                        epochs=args.epochs)
    run_loop(steps, every_s=args.every_s, for_s=args.for_s, window_s=args.window_s,
             emit=lambda line: print(line, flush=True))
    return 0


def _size(n_bytes: float) -> str:
    """``23.9 kB``, ``1.2 GB``: a size as people read it (powers of 1000)."""
    units, i = ("B", "kB", "MB", "GB", "TB"), 0
    while n_bytes >= 1000 and i < len(units) - 1:
        n_bytes, i = n_bytes / 1000, i + 1
    return f"{n_bytes:.0f} B" if i == 0 else f"{n_bytes:.1f} {units[i]}"


def _served_scenarios(settings: Settings) -> dict[str, int] | None:
    """What the running server serves (scenario -> version), or None when it is not reachable."""
    try:

        body = api_get(settings, "/v1/scenarios", timeout_s=3).json()
        return {row["name"]: row["version"] for row in body["scenarios"]}
    except Exception:  # noqa: BLE001 - the server may be down; the repository still answers
        return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankserve", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="everything on the terminal (third-party logs, tracebacks); also RANKSERVE_VERBOSE=1")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", parents=[common], help="build if needed, start Triton + Ray Serve, serve /v1/rank")
    s.add_argument("--no-build", action="store_true", help="do not build missing demo data/models")
    s.set_defaults(func=cmd_serve, quiet=True)
    b = sub.add_parser("build", parents=[common], help="generate the demo marketplace, train and export the models")
    b.add_argument("--items", type=int, help="catalogue size (default: the demo's 50,000); another size builds "
                                          "into <data dir>/scales/, never over the default")
    b.add_argument("--users", type=int, help="users (default: the demo's 20,000)")
    b.add_argument("--force", action="store_true", help="rebuild even if built (a damaged cache too)")
    b.add_argument("--no-index", dest="index", action="store_false",
                   help="skip the FAISS index and its recall@500 (for machines without FAISS; serving needs it)")
    b.add_argument("--json", action="store_true", help="print the whole build summary as JSON")
    b.set_defaults(func=cmd_build, quiet=True)
    from benchmarks.bench import add_arguments

    be = sub.add_parser("bench", parents=[common], help="floor vs framework vs rankserve (batching on/off) at fixed "
                                                        "concurrency, on a data set's models and requests")
    add_arguments(be)
    be.set_defaults(func=cmd_bench)
    from benchmarks.capacity import add_arguments as add_capacity_arguments

    ca = sub.add_parser("capacity", parents=[common], help="highest open-loop req/s at a p99 target, and units for a peak")
    add_capacity_arguments(ca)
    ca.set_defaults(func=cmd_capacity)
    from benchmarks.chaos import add_arguments as add_chaos_arguments

    ch = sub.add_parser("chaos", parents=[common], help="faults and overload against the embedded default: one row per scenario")
    add_chaos_arguments(ch)
    ch.set_defaults(func=cmd_chaos)
    from benchmarks.freshness import add_arguments as add_freshness_arguments

    fr = sub.add_parser("freshness", parents=[common],
                        help="catalogue change -> first answer carrying it, under load (100 changes)")
    add_freshness_arguments(fr)
    fr.set_defaults(func=cmd_freshness)
    from benchmarks.index_bench import add_arguments as add_index_arguments

    ib = sub.add_parser("index-bench", parents=[common],
                        help="compare item indexes (exact, IVF-Flat, IVF-PQ, HNSW) on a data set's item embeddings")
    add_index_arguments(ib)
    ib.set_defaults(func=cmd_index_bench)
    pu, pr, rb = _push_parsers(sub, common)
    it = sub.add_parser("items", parents=[common],
                        help="catalogue changes while serving: block, unblock, add, update; status")
    it.add_argument("action", choices=("block", "unblock", "add", "update", "status"))
    it.add_argument("targets", nargs="*", metavar="ID|FILE",
                    help="item ids (block, unblock) or one file of items (add, update; see docs/reference/catalogue.md)")
    it.set_defaults(func=cmd_items)
    _scenario_parsers(sub, common)
    _keys_parser(sub, common)
    _data_parser(sub, common)
    _training_parsers(sub, common)
    _loop_parsers(sub, common)
    ca_report = _feedback_parsers(sub, common)
    ve = sub.add_parser("verify", parents=[common], help="check every model version's files against the digests "
                                                          "recorded when it was written; non-zero exit on any difference")
    ve.add_argument("--json", action="store_true")
    ve.set_defaults(func=cmd_verify)
    mo = sub.add_parser("models", parents=[common], help="versions, Triton state, traffic split, quality and shadow figures")
    mo.add_argument("--json", action="store_true")
    mo.set_defaults(func=cmd_models)
    for acting in (s, pu, pr, rb, it, ve, mo, ca_report, be, ca, ch, fr, ib):
        _data_option(acting)
    return p


def _data_option(parser: argparse.ArgumentParser) -> None:
    """``--data NAME``: the data set the command acts on (default ``RANKSERVE_DATA``, else demo)."""
    parser.add_argument("--data", metavar="NAME",
                        help="the data set to act on: demo or one imported (default: RANKSERVE_DATA, else demo)")
    parser.set_defaults(acts_on_data=True)


def _push_parsers(sub: Any, common: argparse.ArgumentParser) -> tuple[argparse.ArgumentParser, ...]:
    """``push``, ``promote`` and ``rollback``."""
    pu = sub.add_parser("push", parents=[common], help="validate an artifact, add it as a new version, load it, move traffic")
    pu.add_argument("model")
    pu.add_argument("artifact", help="artifact directory (model.pt, golden.npz, meta.json[, item_tower.pt]; or a "
                                     "declared ranker: model.pt and features.yaml)")
    pu.add_argument("--create", action="store_true",
                    help="create MODEL, a new ranker, from a declared ranker (its first version live)")
    mode = pu.add_mutually_exclusive_group()
    mode.add_argument("--canary", type=float, metavar="PERCENT", help="send this share of users to it")
    mode.add_argument("--shadow", type=float, metavar="PERCENT", help="score this share off the response path")
    pu.add_argument("--version", type=int, help="version number (default: next)")
    pu.set_defaults(func=cmd_push)
    pr = sub.add_parser("promote", parents=[common], help="make the canary or shadow version live")
    pr.add_argument("model")
    pr.add_argument("--if-better", action="store_true", help="only when the canary's CTR beats live's at 95%% "
                                                              "(one-sided two-proportion test on the served log)")
    pr.add_argument("--min-impressions", type=int, default=1000, metavar="N",
                    help="with --if-better: impressions each of canary and live needs first (default 1000)")
    pr.add_argument("--since", metavar="T", help="with --if-better: judge answers served since T (ISO 8601 or an "
                                                 "age: 10m, 2h; default: the whole log)")
    pr.set_defaults(func=cmd_promote)
    rb = sub.add_parser("rollback", parents=[common], help="send all traffic back to an earlier version")
    rb.add_argument("model")
    rb.add_argument("version", nargs="?", type=int)
    rb.set_defaults(func=cmd_rollback)
    return pu, pr, rb


def _keys_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``rankserve keys add NAME --role rank|admin``, ``keys list``, ``keys revoke NAME``."""
    from serving.auth import ROLES

    ke = sub.add_parser("keys", parents=[common], help="API keys for RANKSERVE_AUTH=keys: add, list, revoke")
    actions = ke.add_subparsers(dest="keys_action", required=True)
    add = actions.add_parser("add", help="make a key; it is printed once, alone on the last line")
    add.add_argument("name", help="who or what holds the key (letters, digits, '_', '.', '-')")
    add.add_argument("--role", required=True, choices=ROLES, help="rank: /v1/rank; admin: everything")
    lst = actions.add_parser("list", help="the keys' names, roles and creation times")
    lst.add_argument("--json", action="store_true")
    rev = actions.add_parser("revoke", help="remove a key: every replica refuses it within a second")
    rev.add_argument("name")
    ke.set_defaults(func=cmd_keys)


def _data_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``rankserve data import NAME --schema S --items F --users F --impressions F``, ``data list``."""
    da = sub.add_parser("data", parents=[common], help="data sets: import NAME (Parquet or CSV, checked whole, "
                                                        "written as a new version), list")
    actions = da.add_subparsers(dest="data_action", required=True)
    im = actions.add_parser("import", help="check and encode items, users and impressions under a schema; write them "
                                           "as the data set's next version and make it live")
    im.add_argument("name", help="the data set (lower-case letters, digits, '_' and '-'; demo is the built-in one)")
    im.add_argument("--schema", required=True, metavar="FILE", help="the schema (YAML)")
    for role in ("items", "users", "impressions"):
        im.add_argument(f"--{role}", required=True, metavar="FILE", help=f"the {role}: Parquet (.parquet, .pq) or "
                                                                          "CSV (.csv, .csv.gz, .csv.bz2)")
    ls = actions.add_parser("list", help="the data sets, their versions and sizes")
    ls.add_argument("--json", action="store_true")
    da.set_defaults(func=cmd_data)


def _training_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``rankserve train NAME [--epochs N] [--seed N] [--json]``, ``rankserve features NAME --out F``."""
    name_help = "the data set (default: --data, else RANKSERVE_DATA, else demo)"
    tr = sub.add_parser("train", parents=[common], help="train a data set's default two-tower and DCN-v2 models "
                                                        "and export them into its model repository")
    tr.add_argument("name", nargs="?", help=name_help)
    tr.add_argument("--data", metavar="NAME", help="the data set, when NAME is not given")
    tr.add_argument("--epochs", type=int, default=3, help="passes over the training impressions (default 3)")
    tr.add_argument("--seed", type=int, default=0, help="the holdout's and the training's seed (default 0)")
    tr.add_argument("--json", action="store_true", help="print the summary as JSON")
    tr.set_defaults(func=cmd_train)
    fe = sub.add_parser("features", parents=[common], help="write a data set's training table (the ranker's "
                                                           "inputs of every impression) as Parquet")
    fe.add_argument("name", nargs="?", help=name_help)
    fe.add_argument("--data", metavar="NAME", help="the data set, when NAME is not given")
    fe.add_argument("--ranker-features", metavar="FILE", help="a feature declaration (default: the live ranker's "
                                                               "features.yaml, else the schema's default one)")
    fe.add_argument("--out", required=True, metavar="FILE", help="the Parquet file to write")
    fe.set_defaults(func=cmd_features)


def _loop_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``rankserve simulate`` (users played against a running server) and ``rankserve learn NAME``."""
    si = sub.add_parser("simulate", parents=[common], help="play the demo's users against the running server: rank "
                                                           "requests, clicks from the demo's hidden click model posted as events")
    si.add_argument("--rate", type=float, required=True, help="rank requests per second (Poisson arrivals, open loop)")
    si.add_argument("--duration-s", type=float, required=True, help="how long to run (it stops by itself; Ctrl-C earlier)")
    si.add_argument("--drift-at-s", type=float, metavar="T", help="at T seconds into the run, the users of a share of "
                                                                  "the regions permute their category preferences")
    si.add_argument("--drift-share", type=float, default=0.5, help="the share of regions that drift (default 0.5)")
    si.add_argument("--seed", type=int, default=0, help="seed of the users, clicks and drift (default 0)")
    si.add_argument("--k", type=int, default=10, help="items asked for per request (default 10)")
    si.add_argument("--bucket-s", type=float, default=30.0, help="width of the CTR time buckets (default 30)")
    si.add_argument("--url", help="the server's base address (default: this machine's, RANKSERVE_HOST/PORT)")
    si.add_argument("--out", metavar="FILE", help="also write the figures (JSON) to this file")
    si.set_defaults(func=cmd_simulate)
    le = sub.add_parser("learn", parents=[common], help="loop: join the newest window of the served log, fine-tune "
                                                        "the live ranker, validate, push a canary, judge, promote or roll back")
    le.add_argument("name", nargs="?", help="the data set (default: --data, else RANKSERVE_DATA, else demo)")
    le.add_argument("--data", metavar="NAME", help="the data set, when NAME is not given")
    le.add_argument("--every-s", type=float, default=60.0, help="seconds between passes (default 60)")
    le.add_argument("--for-s", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    le.add_argument("--ranker", help="the ranker to fine-tune (default: RANKSERVE_RANKER_MODEL, ranker)")
    le.add_argument("--window-s", type=float, help="learn from answers served in the newest this many seconds "
                                                   "(default: twice --every-s)")
    le.add_argument("--canary", type=float, default=10.0, metavar="PERCENT", help="the canary's share of traffic (default 10)")
    le.add_argument("--min-impressions", type=int, default=1000, metavar="N",
                    help="impressions each of canary and live needs before the canary is judged (default 1000)")
    le.add_argument("--judge-timeout-s", type=float, help="how long to wait for them before rolling the canary back "
                                                          "(default: --every-s)")
    le.add_argument("--epochs", type=int, default=3, help="passes over the window when fine-tuning (default 3)")
    le.set_defaults(func=cmd_learn)


def _feedback_parsers(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``rankserve log join NAME``, ``rankserve canary report RANKER``; returns the ``canary`` parser."""
    from serving.feedback.commands import cmd_canary, cmd_log

    lo = sub.add_parser("log", parents=[common], help="the served log: join NAME (with the events, into impressions "
                                                      "added to the data set as a new version, or --out FILE)")
    actions = lo.add_subparsers(dest="log_action", required=True)
    jo = actions.add_parser("join", help="join the served log with the events; add the impressions to the data set")
    jo.add_argument("name", nargs="?", help="the data set (default: --data, else RANKSERVE_DATA, else demo)")
    jo.add_argument("--data", metavar="NAME", help="the data set, when NAME is not given")
    jo.add_argument("--out", metavar="FILE", help="write the joined impressions to this Parquet file instead")
    jo.add_argument("--json", action="store_true", help="print the counts and what was written as JSON")
    ca = sub.add_parser("canary", parents=[common], help="a ranker's CTR and AUC per role and version, with 95%% "
                                                         "intervals, from the served log and the events")
    ca.add_argument("action", choices=("report",))
    ca.add_argument("model", metavar="RANKER")
    ca.add_argument("--event", choices=("click", "cart", "order"), default="click", help="the label (default click)")
    ca.add_argument("--json", action="store_true")
    for parser in (jo, ca):
        parser.add_argument("--since", metavar="T", help="answers served since T: ISO 8601 or an age (90s, 10m, 2h, 1d)")
        parser.add_argument("--until", metavar="T", help="answers served before T (same forms)")
        parser.add_argument("--ray", metavar="ADDRESS", help="read the log on this Ray cluster with Ray Data "
                                                             "(the log on a volume every node mounts)")
    lo.set_defaults(func=cmd_log)
    ca.set_defaults(func=cmd_canary)
    return ca


def _scenario_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``rankserve scenarios`` and ``rankserve scenario-freshness``."""
    from benchmarks.scenario_freshness import add_arguments

    sc = sub.add_parser("scenarios", parents=[common], help="scenario files: validate FILE, apply FILE (live on every "
                                                            "replica), list, rollback NAME")
    sc.add_argument("action", choices=("validate", "apply", "list", "rollback"))
    sc.add_argument("targets", nargs="*", metavar="FILE|NAME", help="a scenario file (validate, apply) or a "
                                                                    "scenario's name (rollback)")
    sc.set_defaults(func=cmd_scenarios)
    _data_option(sc)
    sf = sub.add_parser("scenario-freshness", parents=[common],
                        help="scenario apply -> first answer carrying it, under load")
    add_arguments(sf)
    sf.set_defaults(func=cmd_scenario_freshness)
    _data_option(sf)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        check_python()
    except RankserveError as err:
        return _report("rankserve", err, verbose=False)
    args = _parser().parse_args(argv)
    from serving.config import Settings

    try:
        settings = Settings.from_env()
    except ConfigError as err:
        return _report("rankserve", err, verbose=args.verbose)
    if args.verbose:
        settings = settings.model_copy(update={"verbose": True})
    args.log_path = None
    try:
        settings = _acting_on(settings, args)
    except RankserveError as err:
        return _report(f"rankserve {args.command}", err, verbose=settings.verbose)
    try:
        with _output(settings, args):
            return int(args.func(settings, args))
    except RankserveError as err:
        return _report(f"rankserve {args.command}", err, verbose=settings.verbose, log_path=args.log_path)
    except KeyboardInterrupt:
        print(f"rankserve {args.command}: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug: one line here, the traceback in the log
        if settings.verbose or args.log_path is None:
            traceback.print_exception(err)
        print(f"rankserve {args.command}: unexpected error: {type(err).__name__}: {err}", file=sys.stderr)
        if args.log_path is not None and not settings.verbose:
            print(f"  its traceback is in {args.log_path}; --verbose shows it here", file=sys.stderr)
        return 1


_NAMING_COMMANDS = ("data", "train", "features", "log")  # commands that take the data set's name themselves


def _acting_on(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings of the data set a command that takes ``--data`` acts on (``--data``, else
    ``RANKSERVE_DATA``, else demo); the demo's for the others, but for those that name a data set
    themselves (``data``, ``train``, ``features``).

    Raises:
        ConfigError: the name is no data set name.
    """
    from serving.config import DEMO_DATA

    if not getattr(args, "acts_on_data", False):
        # the data set commands name theirs; every other command (build, simulate) acts on the demo,
        # whatever RANKSERVE_DATA says, so its servers serve the demo's tables
        return settings if args.command in _NAMING_COMMANDS else settings.for_data(DEMO_DATA)
    name = args.data or settings.data or DEMO_DATA
    if name != DEMO_DATA:
        from serving.data.store import DataSetStore

        DataSetStore.of(settings).dataset(name)  # refuses a name that is no data set name
    return settings.for_data(name)


def _report(prefix: str, err: RankserveError, *, verbose: bool, log_path: Path | None = None) -> int:
    """One or two lines for a refusal: what went wrong (and its cause's last lines), what to do."""
    from serving.errors import PortInUseError, SetupError

    if verbose:
        traceback.print_exception(err)
    label = "" if isinstance(err, (SetupError, PortInUseError)) else (
        "configuration error: " if isinstance(err, ConfigError) else "refused: ")
    lines = [f"{prefix}: {label}{err.message}"]
    if err.details:
        lines += ["    " + ln for ln in err.details.splitlines()[-10:]]
    if err.hint:
        lines.append(f"  {err.hint}")
    print("\n".join(lines), file=sys.stderr)
    return err.exit_status


@contextlib.contextmanager
def _output(settings: Settings, args: argparse.Namespace) -> Iterator[None]:
    """Where a command's output goes. ``build`` and ``serve`` (``quiet``): rankserve's own screen
    on the terminal; everything else (rankserve's INFO log, Ray's actor logs, FAISS's loader,
    uvicorn, native libraries, child processes) in a log file under ``settings.run_log_dir``, with
    rankserve's own warnings also on the terminal. Verbose, or any other command: all on the terminal."""
    from serving.errors import SetupError
    from serving.startup import new_log_path
    from serving.terminal import ConsoleHandler, quiet

    fmt = logging.Formatter(_LOG_FORMAT)
    root = logging.getLogger()
    if not getattr(args, "quiet", False):
        logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
        yield
        return
    root.setLevel(logging.INFO)
    if settings.verbose:
        handler = ConsoleHandler(stderr=True)
        handler.setFormatter(fmt)
        root.addHandler(handler)
        yield
        return
    try:
        args.log_path = new_log_path(settings.run_log_dir, args.command)
    except OSError as err:
        raise SetupError(f"cannot write the log under {settings.run_log_dir}: {err.strerror or err}",
                         hint="set RANKSERVE_DATA_DIR to a directory this user may write") from err
    with quiet(args.log_path):
        to_file = logging.StreamHandler(sys.stderr)  # descriptor 2 is the log file now
        to_file.setFormatter(fmt)
        own = ConsoleHandler(logging.WARNING, stderr=True)
        own.addFilter(lambda record: record.name.split(".")[0] in _OWN_LOGGERS
                      and not getattr(record, "log_file_only", False))
        own.setFormatter(logging.Formatter("rankserve: %(levelname)s: %(message)s"))
        root.addHandler(to_file)
        root.addHandler(own)
        try:
            yield
        except BaseException:
            log.exception("rankserve %s stopped on this error", args.command, extra={"log_file_only": True})
            raise
        finally:
            root.removeHandler(own)
            root.removeHandler(to_file)


if __name__ == "__main__":
    sys.exit(main())
