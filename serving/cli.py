"""``rankserve`` command line: build, serve, bench, and the model repository workflow."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from serving.config import ConfigError, Settings

__all__ = ["main"]

log = logging.getLogger("rankserve")


def _build(settings: Settings, *, scale: float = 1.0, force: bool = False) -> dict:
    from training.build import build

    return build(settings.marketplace_path.parent, settings.model_repository, scale=scale, force=force)


@contextlib.contextmanager
def triton_endpoint(settings: Settings) -> Iterator[str]:
    """Yield the gRPC URL of Triton: the configured one, or an embedded server started here."""
    if settings.triton_url:
        log.info("using Triton at %s (nothing launched)", settings.triton_url)
        yield settings.triton_url
        return
    from serving.triton_process import TritonProcess

    with TritonProcess(settings.model_repository, runtime_dir=settings.triton_runtime_dir) as triton:
        log.info("embedded Triton ready at %s (metrics %s)", triton.grpc_url, triton.metrics_url)
        yield triton.grpc_url


def _example_curl(settings: Settings) -> str:
    body = json.dumps({"user_id": 42, "k": 5})
    return (f"curl -s -X POST http://{settings.host}:{settings.port}/v1/rank "
            f"-H 'content-type: application/json' -d '{body}'")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from ray import serve

    from serving.app import build_app
    from serving.ray_runtime import init_ray, shutdown_ray

    if not args.no_build:
        summary = _build(settings)
        log.info("models ready: %s", json.dumps(summary.get("quality", {})))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with triton_endpoint(settings) as url:
        init_ray(settings.ray_address)
        try:
            serve.start(http_options={"host": settings.host, "port": settings.port})
            serve.run(build_app(settings, url), name="rankserve", route_prefix="/")
            print(f"\nrankserve is serving on http://{settings.host}:{settings.port}  (Ctrl-C stops everything)")
            print(f"try:\n  {_example_curl(settings)}\n", flush=True)
            stop.wait()
            print("stopping: draining requests, Ray, Triton ...", flush=True)
        finally:
            shutdown_ray()
    return 0


def cmd_build(settings: Settings, args: argparse.Namespace) -> int:
    summary = _build(settings, scale=args.scale, force=args.force)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankserve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="build if needed, start Triton + Ray Serve, serve /v1/rank")
    s.add_argument("--no-build", action="store_true", help="do not build missing demo data/models")
    s.set_defaults(func=cmd_serve)
    b = sub.add_parser("build", help="generate the demo marketplace, train and export the models")
    b.add_argument("--scale", type=float, default=1.0, help="size multiplier of the demo marketplace")
    b.add_argument("--force", action="store_true", help="rebuild even if built")
    b.set_defaults(func=cmd_build)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as err:
        print(f"rankserve: configuration error: {err}", file=sys.stderr)
        return 2
    return int(args.func(settings, args))


if __name__ == "__main__":
    sys.exit(main())
