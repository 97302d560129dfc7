"""What ``rankserve log join``, ``rankserve canary report`` and ``rankserve promote --if-better`` do.

Owns: the log folder a command reads (:func:`log_root`), the join's destination (a new data set
version, or ``--out``: a Parquet file written atomically), the printing of the counts and of the
canary's figures, and the guarded promotion (the verdict of ``serving.feedback.judge``, then
``serving.repository.push.promote`` unchanged). Must not touch: argument parsing
(``serving.cli``), the join's and the judgement's logic, traffic other than through ``promote``.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from serving.config import DEMO_DATA, dataset_dir
from serving.data.store import DataSet, DataSetStore
from serving.errors import ConfigError, PushRefusedError, SchemaError, SetupError
from serving.feedback.join import (
    EMPTY_EVENTS,
    EVENTS_COLUMNS,
    SERVED_COLUMNS,
    IdTypes,
    JoinResult,
    join_logs,
    join_tables,
    log_files,
    parse_time,
    with_damaged,
)
from serving.pipeline.routing import Traffic
from serving.repository.registry import ModelRegistry

if TYPE_CHECKING:
    from serving.config import Settings

__all__ = ["cmd_canary", "cmd_log", "join_logs_ray", "log_root", "promote_if_better"]


def log_root(settings: Settings) -> Path:
    """The log folder of ``settings.data``: ``<data_dir>/datasets/<name>/log`` (the demo's included)."""
    return dataset_dir(settings.data_dir, settings.data) / "log"


def _id_types(ds: DataSet) -> IdTypes:
    """The data set's id types (text when it was never imported)."""
    if ds.live_version() is None:
        return IdTypes()
    tables = ds.tables()
    kind = lambda ids: pa.int64() if ids.dtype.kind in "iu" else pa.string()  # noqa: E731
    return IdTypes(user=kind(tables.user_ids), item=kind(tables.item_ids))


def _join(settings: Settings, args: argparse.Namespace, ids: IdTypes) -> JoinResult:
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if getattr(args, "until", None) else None
    if since is not None and until is not None and until <= since:
        raise ConfigError(f"--until ({until.isoformat()}) must be after --since ({since.isoformat()})", field="until")
    root = log_root(settings)
    window_s = settings.attribution_window_s
    if getattr(args, "ray", None):
        return join_logs_ray(settings, args.ray, root, ids, since, until)
    return join_logs(root, ids, since, until, attribution_window_s=window_s)


def join_logs_ray(settings: Settings, address: str, root: Path, ids: IdTypes, since: datetime | None,
                  until: datetime | None) -> JoinResult:
    """:func:`~serving.feedback.join.join_logs` on a Ray cluster: its workers read the files (on a
    volume every node mounts) with Ray Data; the same query joins them here."""
    from serving.ray_runtime import init_ray, read_parquet_table, shutdown_ray

    served, events = log_files(root)
    init_ray(address, token_file=settings.ray_token_file)
    try:
        served_table = read_parquet_table([str(p) for p in served.files], list(SERVED_COLUMNS))
        events_table = read_parquet_table([str(p) for p in events.files], list(EVENTS_COLUMNS)) \
            if events.files else EMPTY_EVENTS
    finally:
        shutdown_ray(serve_timeout_s=0)
    result = join_tables(served_table, events_table, ids, since, until,
                         attribution_window_s=settings.attribution_window_s)
    return with_damaged(result, served.damaged + events.damaged)


def cmd_log(settings: Settings, args: argparse.Namespace) -> int:
    """``rankserve log join NAME [--since T] [--until T] [--out FILE] [--ray ADDRESS] [--json]``."""
    from serving.feedback.dataset import add_joined

    settings = settings.for_data(args.name or args.data or settings.data or DEMO_DATA)
    ds = DataSetStore.of(settings).dataset(settings.data)
    result = _join(settings, args, _id_types(ds))
    if result.damaged:
        raise SchemaError(f"damaged log file(s) under {log_root(settings)}: "
                          + "; ".join(f"{p.name}: {why}" for p, why in result.damaged) + "; nothing written",
                          hint="move them out of the folder (the log writer only ever renames whole files into it)")
    if result.counts.impressions == 0:
        raise SchemaError(f"nothing to add: no answer was served in the window ({result.counts.line()}); "
                          "nothing written", hint="widen --since/--until, or serve requests first")
    summary: dict[str, object] = {"data_set": settings.data, "counts": result.counts.to_json()}
    if args.out:
        _write_parquet(result.table, Path(args.out))
        summary["out"] = str(args.out)
        done = f"{result.table.num_rows:,} joined impressions written to {args.out}"
    else:
        added = add_joined(ds, result.table, {"log": str(log_root(settings)), "since": args.since,
                                              "until": args.until, "counts": result.counts.to_json()})
        summary.update(version=added.version, base_version=added.base_version, rows=added.rows,
                       unknown_items=added.unknown_items, unknown_users=added.unknown_users)
        done = added.line()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(result.counts.line())
        print(done)
    return 0


def _write_parquet(table: pa.Table, out: Path) -> None:
    """``table`` to ``out`` through a hidden file renamed into place: a reader never sees half of it."""
    import pyarrow.parquet as pq

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SetupError(f"cannot write {out}: {err.strerror or err}", hint="choose a folder this user may write") \
            from err


def cmd_canary(settings: Settings, args: argparse.Namespace) -> int:
    """``rankserve canary report RANKER [--data D] [--since T] [--event E] [--json]``."""
    from serving.feedback.judge import judge

    traffic = _traffic(ModelRegistry.of(settings), args.model)
    result = _join(settings, args, _id_types(DataSetStore.of(settings).dataset(settings.data)))
    report = judge(result.table, args.model, event=args.event, live=traffic.live, canary=traffic.canary_version,
                   counts=result.counts)
    if args.json:
        print(json.dumps({**report.to_json(), "damaged_files": [str(p) for p, _ in result.damaged]}, indent=2))
        return 0
    print(result.counts.line())
    print("\n".join(report.lines()))
    if traffic.canary_version is None:
        print(f"{args.model} has no canary: live v{traffic.live} alone")
    return 0


def promote_if_better(settings: Settings, args: argparse.Namespace) -> int:
    """``rankserve promote RANKER --if-better``: promote the canary only when it beats live at 95%.

    Raises:
        PushRefusedError: no canary, not enough impressions, or not better (traffic unchanged).
    """
    from serving.feedback.judge import judge
    from serving.repository.push import promote

    registry = ModelRegistry.of(settings)
    traffic = _traffic(registry, args.model)
    if traffic.canary_version is None:
        raise PushRefusedError(f"{args.model} has no canary to judge; nothing changed",
                               hint="--if-better judges a canary by its users' clicks; a shadow is never shown")
    result = _join(settings, args, _id_types(DataSetStore.of(settings).dataset(settings.data)))
    report = judge(result.table, args.model, live=traffic.live, canary=traffic.canary_version, counts=result.counts)
    better, reason = report.canary_better(args.min_impressions)
    if not better:
        raise PushRefusedError(f"{args.model} v{traffic.canary_version} not promoted: {reason}; nothing changed")
    print(reason)
    print(json.dumps(promote(registry, args.model).to_json()))
    return 0


def _traffic(registry: ModelRegistry, model: str) -> Traffic:
    if model not in registry.models():
        raise ConfigError(f"no model {model!r} in {registry.repo}; models: {registry.models()}", field="model")
    return registry.traffic(model)
