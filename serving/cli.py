"""``rankserve`` command line: build, serve, bench, capacity, the model repository workflow, catalogue
changes and scenarios.

Owns: argument parsing, start-up contexts (Triton configured or embedded, Ray, Serve) and
turning refusals into one-line messages with an exit status. Must not touch: ranking logic.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from serving.config import ConfigError, Settings
from serving.errors import RankserveError

__all__ = ["main"]

log = logging.getLogger("rankserve")


def at_scale(settings: Settings, items: int | None, users: int | None) -> Settings:
    """The settings of a marketplace of ``items`` items and ``users`` users: its own data and model
    repository under ``<data_dir>/scales/``, so a large build never overwrites the default one."""
    if items is None and users is None:
        return settings
    home = settings.data_dir / "scales" / f"items{items or 'default'}-users{users or 'default'}"
    return settings.model_copy(update={"data_dir": home, "model_repository": home / "model_repository"})


def _build(settings: Settings, *, items: int | None = None, users: int | None = None, force: bool = False,
           index: bool = True) -> dict:
    from training.build import build

    return build(settings.marketplace_path.parent, settings.model_repository, items=items, users=users, force=force,
                 index=index, settings=settings)


@contextlib.contextmanager
def triton_endpoint(settings: Settings) -> Iterator[str]:
    """Yield the gRPC URL of Triton: the configured one, or an embedded server started here and
    restarted whenever it goes down."""
    if settings.triton_url:
        log.info("using Triton at %s (nothing launched)", settings.triton_url)
        yield settings.triton_url
        return
    from serving.triton.process import TritonProcess
    from serving.triton.supervisor import TritonSupervisor

    endpoint_file = settings.triton_runtime_dir / "endpoint.json"
    with TritonProcess(settings.model_repository, runtime_dir=settings.triton_runtime_dir,
                       binary=settings.triton_bin, kind=settings.triton_kind,
                       torch_threads=settings.triton_torch_threads) as triton, TritonSupervisor(triton):
        log.info("embedded Triton ready at %s (metrics %s), supervised", triton.grpc_url, triton.metrics_url)
        endpoint_file.write_text(json.dumps({"grpc_url": triton.grpc_url, "pid": os.getpid()}))
        try:
            yield triton.grpc_url
        finally:
            endpoint_file.unlink(missing_ok=True)


def running_triton_url(settings: Settings) -> str | None:
    """gRPC URL of the configured Triton, or of the embedded one a running ``rankserve serve`` started."""
    if settings.triton_url:
        return settings.triton_url
    endpoint_file = settings.triton_runtime_dir / "endpoint.json"
    if not endpoint_file.is_file():
        return None
    info = json.loads(endpoint_file.read_text())
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None
    return str(info["grpc_url"])


def _example_curl(settings: Settings) -> str:
    body = json.dumps({"user_id": 42, "k": 5})
    return (f"curl -s -X POST http://{settings.host}:{settings.port}/v1/rank "
            f"-H 'content-type: application/json' -d '{body}'")


@contextlib.contextmanager
def serving_app(settings: Settings) -> Iterator[None]:
    """Triton (configured or embedded), Ray, the ingress (``settings.ingress`` on ``settings.port``
    and ``settings.grpc_port``) and the rankserve application, up for the ``with`` body; Ray and
    the embedded Triton stop after it."""
    from ray import serve

    from serving.app import build_app
    from serving.ray_runtime import Ingress, init_ray, shutdown_ray, start_serve
    from serving.service import drain_flag

    ingress = Ingress.from_settings(settings)
    drain_flag(settings).unlink(missing_ok=True)  # left by a server that did not stop cleanly
    with triton_endpoint(settings) as url:
        init_ray(settings.ray_address, ingress=ingress)
        try:
            start_serve(ingress)
            serve.run(build_app(settings, url), name="rankserve", route_prefix="/")
            yield
        finally:
            shutdown_ray()


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    if not args.no_build:
        summary = _build(settings)
        log.info("models ready: %s", json.dumps(summary.get("quality", {})))
    stop = threading.Event()
    with serving_app(settings):
        # after Ray's start-up, which installs handlers of its own
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"\nrankserve is serving on http://{settings.host}:{settings.port}  (Ctrl-C stops everything)")
        if settings.grpc_port:
            print(f"gRPC rankserve.v1.Ranker/Rank on {settings.host}:{settings.grpc_port}")
        print(f"try:\n  {_example_curl(settings)}\n", flush=True)
        stop.wait()
        print(f"stopping: draining requests (at most {settings.drain_timeout_s:g} s), Ray, Triton ...", flush=True)
        _drain(settings)
    return 0


def _drain(settings: Settings) -> None:
    """Tell the replicas to refuse new requests (503) and wait until those in flight are answered,
    at most ``settings.drain_timeout_s``."""
    import httpx

    from serving.service import drain_flag
    from serving.tools.workload import metric_values

    flag = drain_flag(settings)
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()
    t_end = time.monotonic() + settings.drain_timeout_s
    try:
        while time.monotonic() < t_end:
            time.sleep(0.1)
            try:
                text = httpx.get(f"http://{settings.host}:{settings.port}/metrics", timeout=1).text
            except httpx.HTTPError:
                break
            if metric_values(text, ("rankserve_queue_depth",)).get("rankserve_queue_depth", 0) == 0:
                break
    finally:
        flag.unlink(missing_ok=True)


def cmd_build(settings: Settings, args: argparse.Namespace) -> int:
    scaled = at_scale(settings, args.items, args.users)
    summary = _build(scaled, items=args.items, users=args.users, force=args.force, index=args.index)
    summary["data_dir"], summary["model_repository"] = str(scaled.data_dir), str(scaled.model_repository)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from serving.ray_runtime import shutdown_ray
    from serving.tools.bench import run_bench

    settings = at_scale(settings, args.items, args.users)
    _build(settings, items=args.items, users=args.users)
    levels = [int(x) for x in args.levels.split(",") if x]
    with triton_endpoint(settings) as url:
        try:
            run_bench(settings, url, levels=levels, duration_s=args.duration_s, out_dir=args.out)
        finally:
            shutdown_ray()
    return 0


def cmd_capacity(settings: Settings, args: argparse.Namespace) -> int:
    from serving.net import QUIET_PORTS, free_port, is_loopback
    from serving.tools.capacity import run_capacity

    if args.url:
        if not is_loopback(args.url):
            print("rankserve capacity: only loopback targets are load-tested", file=sys.stderr)
            return 2
        run_capacity(args.url.rstrip("/"), settings, args, unit=f"the rankserve at {args.url}")
        return 0
    _build(settings)
    port = free_port(QUIET_PORTS)
    unit = (f"embedded default on this machine ({os.cpu_count()} CPU cores, {settings.num_replicas} Serve "
            f"replica(s), one Triton, {_gpu_words()}; load generator on the same machine)")
    with serving_app(settings.model_copy(update={"port": port, "grpc_port": 0})):
        run_capacity(f"http://127.0.0.1:{port}", settings, args, unit=unit)
    return 0


def cmd_freshness(settings: Settings, args: argparse.Namespace) -> int:
    from serving.net import QUIET_PORTS, free_port
    from serving.tools.freshness import repository_copy, run_freshness

    settings = at_scale(settings, args.items, None)
    _build(settings, items=args.items)
    port = free_port(QUIET_PORTS)
    scratch = repository_copy(settings.model_repository)  # the benchmark's changes stay out of the real one
    run_settings = settings.model_copy(update={"port": port, "grpc_port": 0, "model_repository": scratch})
    unit = (f"embedded default on this machine ({os.cpu_count()} CPU cores, {settings.num_replicas} Serve "
            f"replica(s), {_gpu_words()}), scratch copy of {settings.model_repository}")
    try:
        with serving_app(run_settings):
            run_freshness(f"http://127.0.0.1:{port}", run_settings, args, unit=unit)
    finally:
        import shutil

        shutil.rmtree(scratch.parent, ignore_errors=True)
    return 0


def cmd_scenario_freshness(settings: Settings, args: argparse.Namespace) -> int:
    from serving.net import QUIET_PORTS, free_port
    from serving.tools.freshness import repository_copy
    from serving.tools.scenario_freshness import run_scenario_freshness

    _build(settings)
    port = free_port(QUIET_PORTS)
    scratch = repository_copy(settings.model_repository)  # the benchmark's scenario versions stay out of the real one
    run_settings = settings.model_copy(update={"port": port, "grpc_port": 0, "model_repository": scratch,
                                               "num_replicas": args.replicas})
    unit = (f"embedded default on this machine ({os.cpu_count()} CPU cores, {args.replicas} Serve replica(s), "
            f"{_gpu_words()}), scratch copy of {settings.model_repository}")
    try:
        with serving_app(run_settings):
            run_scenario_freshness(f"http://127.0.0.1:{port}", run_settings, args, unit=unit)
    finally:
        import shutil

        shutil.rmtree(scratch.parent, ignore_errors=True)
    return 0


def cmd_index_bench(settings: Settings, args: argparse.Namespace) -> int:
    from serving.tools.index_bench import run_index_bench

    settings = at_scale(settings, args.items, None)
    _build(settings, items=args.items)
    run_index_bench(settings, args)
    return 0


def cmd_chaos(settings: Settings, args: argparse.Namespace) -> int:
    from serving.tools.chaos import resolve_capacity, run_chaos

    _build(settings)
    args.capacity_rps = resolve_capacity(args)
    outcomes = run_chaos(settings, args)
    return 0 if outcomes else 1


def _gpu_words() -> str:
    import torch

    return f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"


class _NoTriton:
    """Stands for Triton when none is running: versions load when the server next starts."""

    def load_model(self, name: str) -> None:
        log.warning("no running Triton found: %s will be loaded when rankserve serve starts", name)

    def model_ready(self, name: str, version: str = "") -> bool:
        return True


def cmd_push(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from serving.pipeline.features import FeatureTables
    from serving.repository.push import ModelLoader, push
    from serving.repository.registry import ModelRegistry

    url = running_triton_url(settings)
    if url is None:
        triton: ModelLoader = _NoTriton()
    else:
        from serving.triton.client import TritonClient

        triton = TritonClient(url)
    result = push(ModelRegistry(settings.model_repository), args.model, Path(args.artifact),
                  FeatureTables.load(settings.marketplace_path), triton,
                  canary_percent=args.canary, shadow_percent=args.shadow, version=args.version)
    print(json.dumps({"model": result.model, "version": result.version, "traffic": result.traffic.to_json(),
                      "checks": result.checks}, indent=2))
    return 0


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    from serving.repository.push import promote
    from serving.repository.registry import ModelRegistry

    print(json.dumps(promote(ModelRegistry(settings.model_repository), args.model).to_json()))
    return 0


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from serving.repository.push import rollback
    from serving.repository.registry import ModelRegistry

    print(json.dumps(rollback(ModelRegistry(settings.model_repository), args.model, args.version).to_json()))
    return 0


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    from serving.repository.registry import ModelRegistry

    reg = ModelRegistry(settings.model_repository)
    live: dict = {}
    try:
        import httpx

        live = httpx.get(f"http://{settings.host}:{settings.port}/v1/models", timeout=3).json()
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
                         "validation": meta.get("validation", {}),
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
    """Block, unblock, add or update items (one atomic, versioned change), or show the catalogue."""
    from serving.pipeline.features import FeatureTables
    from serving.repository.catalogue import ChangeLog, read_item_rows
    from serving.repository.nodes import live_nodes

    changes = ChangeLog(settings.model_repository)
    base = FeatureTables.load(settings.marketplace_path)
    if args.action == "status":
        cat = changes.current(base)
        print(json.dumps({"catalogue_version": cat.version, "items": cat.tables.n_items, "blocked": cat.n_blocked,
                          "blocked_ids": sorted(map(int, cat.blocked.nonzero()[0]))[:50],
                          "nodes": {n.key: n.catalogue_version for n in live_nodes(settings.model_repository)}},
                         indent=2))
        return 0
    if args.action in ("add", "update") and len(args.targets) != 1:
        raise ConfigError(f"rankserve items {args.action} takes one FILE (JSON array or JSON lines of items)")
    if args.action == "block":
        change = changes.append(base, block=args.targets)
    elif args.action == "unblock":
        change = changes.append(base, unblock=args.targets)
    elif args.action == "add":
        change = changes.append(base, add=read_item_rows(args.targets[0]))
    else:
        change = changes.append(base, update=read_item_rows(args.targets[0]))
    print(json.dumps({"catalogue_version": change.version, "blocked": list(change.block),
                      "unblocked": list(change.unblock), "added_ids": list(change.added_ids),
                      "updated_ids": [r["item_id"] for r in change.update]}))
    return 0


def cmd_scenarios(settings: Settings, args: argparse.Namespace) -> int:
    """Validate, apply, list or roll back scenario files (``serving.repository.scenarios``)."""
    from pathlib import Path

    from serving.errors import ScenarioRefusedError
    from serving.pipeline.features import FeatureTables
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
    registry = ModelRegistry(settings.model_repository)
    groups = ChangeLog(settings.model_repository).current(FeatureTables.load(settings.marketplace_path)).group_counts()
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


def _served_scenarios(settings: Settings) -> dict[str, int] | None:
    """What the running server serves (scenario -> version), or None when it is not reachable."""
    try:
        import httpx

        body = httpx.get(f"http://{settings.host}:{settings.port}/v1/scenarios", timeout=3).json()
        return {row["name"]: row["version"] for row in body["scenarios"]}
    except Exception:  # noqa: BLE001 - the server may be down; the repository still answers
        return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankserve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="build if needed, start Triton + Ray Serve, serve /v1/rank")
    s.add_argument("--no-build", action="store_true", help="do not build missing demo data/models")
    s.set_defaults(func=cmd_serve)
    b = sub.add_parser("build", help="generate the demo marketplace, train and export the models")
    b.add_argument("--items", type=int, help="catalogue size (default: the demo's 50,000); another size builds "
                                          "into <data dir>/scales/, never over the default")
    b.add_argument("--users", type=int, help="users (default: the demo's 20,000)")
    b.add_argument("--force", action="store_true", help="rebuild even if built")
    b.add_argument("--no-index", dest="index", action="store_false",
                   help="skip the FAISS index and its recall@500 (for machines without FAISS; serving needs it)")
    b.set_defaults(func=cmd_build)
    from serving.tools.bench import add_arguments

    be = sub.add_parser("bench", help="floor vs framework vs rankserve (batching on/off) at fixed concurrency")
    add_arguments(be)
    be.set_defaults(func=cmd_bench)
    from serving.tools.capacity import add_arguments as add_capacity_arguments

    ca = sub.add_parser("capacity", help="highest open-loop req/s at a p99 target, and units for a peak")
    add_capacity_arguments(ca)
    ca.set_defaults(func=cmd_capacity)
    from serving.tools.chaos import add_arguments as add_chaos_arguments

    ch = sub.add_parser("chaos", help="faults and overload against the embedded default: one row per scenario")
    add_chaos_arguments(ch)
    ch.set_defaults(func=cmd_chaos)
    from serving.tools.freshness import add_arguments as add_freshness_arguments

    fr = sub.add_parser("freshness", help="catalogue change -> first answer carrying it, under load (100 changes)")
    add_freshness_arguments(fr)
    fr.set_defaults(func=cmd_freshness)
    from serving.tools.index_bench import add_arguments as add_index_arguments

    ib = sub.add_parser("index-bench", help="compare item indexes (exact, IVF-Flat, IVF-PQ, HNSW) on the built catalogue")
    add_index_arguments(ib)
    ib.set_defaults(func=cmd_index_bench)
    pu = sub.add_parser("push", help="validate an artifact, add it as a new version, load it, move traffic")
    pu.add_argument("model")
    pu.add_argument("artifact", help="artifact directory (model.pt, golden.npz, meta.json[, item_tower.pt])")
    mode = pu.add_mutually_exclusive_group()
    mode.add_argument("--canary", type=float, metavar="PERCENT", help="send this share of users to it")
    mode.add_argument("--shadow", type=float, metavar="PERCENT", help="score this share off the response path")
    pu.add_argument("--version", type=int, help="version number (default: next)")
    pu.set_defaults(func=cmd_push)
    pr = sub.add_parser("promote", help="make the canary or shadow version live")
    pr.add_argument("model")
    pr.set_defaults(func=cmd_promote)
    rb = sub.add_parser("rollback", help="send all traffic back to an earlier version")
    rb.add_argument("model")
    rb.add_argument("version", nargs="?", type=int)
    rb.set_defaults(func=cmd_rollback)
    it = sub.add_parser("items", help="catalogue changes while serving: block, unblock, add, update; status")
    it.add_argument("action", choices=("block", "unblock", "add", "update", "status"))
    it.add_argument("targets", nargs="*", metavar="ID|FILE",
                    help="item ids (block, unblock) or one JSON / JSON-lines file of items (add, update)")
    it.set_defaults(func=cmd_items)
    sc = sub.add_parser("scenarios", help="scenario files: validate FILE, apply FILE (live on every replica), list, "
                                          "rollback NAME")
    sc.add_argument("action", choices=("validate", "apply", "list", "rollback"))
    sc.add_argument("targets", nargs="*", metavar="FILE|NAME", help="a scenario file (validate, apply) or a "
                                                                    "scenario's name (rollback)")
    sc.set_defaults(func=cmd_scenarios)
    from serving.tools.scenario_freshness import add_arguments as add_scenario_freshness_arguments

    sf = sub.add_parser("scenario-freshness", help="scenario apply -> first answer carrying it, under load")
    add_scenario_freshness_arguments(sf)
    sf.set_defaults(func=cmd_scenario_freshness)
    mo = sub.add_parser("models", help="versions, Triton state, traffic split, quality and shadow figures")
    mo.add_argument("--json", action="store_true")
    mo.set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as err:
        print(f"rankserve: configuration error: {err}", file=sys.stderr)
        return 2
    try:
        return int(args.func(settings, args))
    except ConfigError as err:
        print(f"rankserve {args.command}: configuration error: {err.message}", file=sys.stderr)
        return 2
    except RankserveError as err:
        print(f"rankserve {args.command}: refused: {err.message}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
