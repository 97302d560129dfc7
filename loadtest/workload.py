"""What the benchmarks share of load generation: request bodies, the load generator as a process.

Owns: the benchmarks' request bodies (the demo's, an imported data set's in its schema's ids
with contexts decoded from its impressions, and :func:`request_bodies`, which picks by the data
set a benchmark measures) and their file, running ``loadtest.loadgen`` in its own process
(closed loop or open loop) and reading its result. Must not touch: servers (the benchmarks start
them and read their ``/metrics``), the pipeline, a data set's files (read only).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.config import DEMO_DATA

if TYPE_CHECKING:
    import pyarrow as pa

    from serving.config import Settings
    from serving.data.tables import DataTables

__all__ = ["dataset_bodies", "recall_bodies", "request_bodies", "run_loadgen", "write_bodies"]


def recall_bodies(n_users: int, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` recall requests (no candidates, k 20) for random known users."""
    rng = np.random.default_rng(seed)
    return [{"user_id": int(u), "k": 20} for u in rng.integers(0, n_users, n)]


def dataset_bodies(tables: DataTables, impressions: pa.Table, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` recall requests (no candidates, k 20) in an imported data set's own ids: each the user
    of one of its ``impressions`` (encoded, as the data set stores them) drawn at random, with
    that impression's context as a request carries it (:meth:`DataTables.encode_context` takes it
    back to the same codes): categorical values and item groups as their values, numbers in
    their own units, sequences as item ids. A field the impression did not hold is left out, and
    so is ``context`` when none is left (a schema without context)."""
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, impressions.num_rows, n)
    users = tables.user_ids[impressions.column("user_row").to_numpy()[picked]].tolist()
    fields = _context_values(tables, impressions, picked)
    bodies: list[dict[str, Any]] = []
    for i, user in enumerate(users):
        context = {name: values[i] for name, values in fields.items() if values[i] is not None}
        bodies.append({"user_id": user, "k": 20, **({"context": context} if context else {})})
    return bodies


def _context_values(tables: DataTables, impressions: pa.Table, picked: np.ndarray) -> dict[str, list[Any]]:
    """Each context field the impressions hold -> its value in the ``picked`` rows, decoded (None:
    not held there: code 0, an empty sequence)."""
    schema = tables.schema
    out: dict[str, list[Any]] = {}
    for name in schema.context_fields:
        column = f"context.{name}"
        if column not in impressions.column_names:
            continue
        if name in schema.context.sequences:
            rows = impressions.column(column).take(picked).to_pylist()
            out[name] = [tables.item_ids[r].tolist() if r else None for r in rows]
        elif name in schema.context.numeric:
            _, mean, std = tables.context_numeric[name]
            out[name] = (impressions.column(column).to_numpy()[picked].astype(np.float64) * std + mean).tolist()
        else:  # a categorical field's own vocabulary, or an item group's (the items' vocabulary)
            vocab = tables.vocab[f"context.{name}" if name in schema.context.categorical else f"item.{name}"]
            values = np.empty(len(vocab) + 1, dtype=object)  # code -> value; code 0 (unseen, null) -> None
            for value, code in vocab.items():
                values[code] = value
            out[name] = values[impressions.column(column).to_numpy()[picked]].tolist()
    return out


def request_bodies(settings: Settings, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` recall requests for the data set ``settings.data``: the demo's (:func:`recall_bodies`
    over its built users), or an imported data set's live version's (:func:`dataset_bodies`).

    Raises:
        SetupError: the data set has no version (never imported). IntegrityError: its files are damaged.
    """
    if settings.data == DEMO_DATA:
        from serving.pipeline.features import FeatureTables

        return recall_bodies(FeatureTables.load(settings.marketplace_path).n_users, n, seed)
    from serving.data.store import DataSetStore

    ds = DataSetStore.of(settings).dataset(settings.data)
    version = ds.live_version()
    return dataset_bodies(ds.tables(version), ds.impressions(version), n, seed)


def write_bodies(bodies: list[dict[str, Any]], directory: Path | None = None) -> Path:
    """Write one JSON body per line into ``directory`` (default: a new temporary one)."""
    path = Path(directory or tempfile.mkdtemp()) / "bodies.jsonl"
    path.write_text("\n".join(json.dumps(b) for b in bodies))
    return path


def run_loadgen(url: str, bodies_file: Path, *, duration_s: float, concurrency: int, warmup_s: float = 1.5,
                rate: float | None = None, seed: int = 0, timings: bool = False) -> dict[str, Any]:
    """One ``loadtest.loadgen`` run in its own process; closed loop (with ``timings``: the
    mean of each server stage too), or open loop at ``rate``/s (``concurrency`` then caps the
    requests in flight). Returns its JSON summary."""
    cmd = [sys.executable, "-m", "loadtest.loadgen", "--url", url, "--bodies", str(bodies_file),
           "--concurrency", str(concurrency), "--duration-s", str(duration_s), "--warmup-s", str(warmup_s)]
    if rate is not None:
        cmd += ["--rate", f"{rate:.3f}", "--seed", str(seed)]
    elif timings:
        cmd.append("--timings")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + warmup_s + 120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result
