"""``rankserve scenario-freshness``: how long a scenario apply takes to reach the answers, under load.

Owns: the scenario freshness benchmark and its report. Must not touch: the server's internals.

The server runs on a copy of the model repository (the benchmark's versions never reach the
user's scenarios). Requests of every live scenario (``home``, ``similar`` with a seed item,
``shop`` with a shop) run closed loop at ``concurrency`` throughout, each answer recorded with the
time it arrived, its scenario and the scenario version it carries (an imported data set's:
its users and contexts, a seed item and its groups' values). ``applies`` new versions are
applied one after another, as ``rankserve scenarios apply`` applies them, in turn to each
scenario, each moving that scenario's ``default_k`` by one (the answers' length shows the new
version at work). An apply's delay runs from the moment it returns (its version live in the
repository) to the arrival of the first answer of that scenario carrying its version or a later
one. With several replicas that is when the first of them serves it; when every replica does is
bounded by the last answer carrying an older version (``everywhere``: from the apply to the
arrival of the last answer of that scenario with a version below it, 0 when none came after the
apply). Alongside: the load's request rate and failures, which must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.freshness import (
    add_timing_arguments,
    first_answer_delays,
    load_figures,
    publish,
    spread_ms,
    timed_changes,
)
from serving.config import Settings
from serving.data.tables import DataTables
from serving.pipeline.catalogue import Catalogue
from serving.repository.registry import ModelRegistry
from serving.repository.scenarios import ScenarioStore

__all__ = ["add_arguments", "dataset_bodies_for", "last_old_answer_delays", "mixed_bodies", "run_scenario_freshness",
           "scenario_freshness_report"]


def mixed_bodies(tables: DataTables, scenarios: list[str], n: int = 3000, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` requests spread over ``scenarios``, each with the context it may need: a seed item and
    its shop (so a shop scenario asks about a shop that has items)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, tables.n_users, n)
    items = rng.integers(0, tables.n_items, n)
    shops = tables.item_cat[items, 1]
    return [{"user_id": int(u), "scenario": scenarios[i % len(scenarios)], "item_id": int(it), "shop_id": int(sh)}
            for i, (u, it, sh) in enumerate(zip(users, items, shops, strict=True))]


def dataset_bodies_for(settings: Settings, tables: DataTables, scenarios: list[str], n: int = 3000,
                       seed: int = 0) -> list[dict[str, Any]]:
    """``n`` requests of an imported data set spread over ``scenarios``: each a user and context of
    one of its impressions (``loadtest.workload.request_bodies``), a seed item (``item_id``) and,
    in the context, the seed's value of every item group (so a scenario restricted to the request's
    store asks about a store that has items)."""
    from loadtest.workload import request_bodies

    rng = np.random.default_rng(seed)
    groups = tables.schema.items.groups
    codes = tables.item_groups[:, [tables.group_col(g) for g in groups]] if groups else np.ones((tables.n_items, 0))
    valued = np.flatnonzero((codes > 0).all(axis=1))  # items with a value in every group
    rows = rng.choice(valued if valued.size else np.arange(tables.n_items), n)
    names = {g: {code: value for value, code in tables.vocab[f"item.{g}"].items()} for g in groups}
    seeds = tables.item_ids[rows].tolist()
    out = []
    for i, (body, row, seed_id) in enumerate(zip(request_bodies(settings, n, seed), rows, seeds, strict=True)):
        context = {**body.get("context", {}), **{g: names[g][int(codes[row, j])] for j, g in enumerate(groups)
                                                 if int(codes[row, j]) in names[g]}}
        out.append({**body, "scenario": scenarios[i % len(scenarios)], "item_id": seed_id,
                    **({"context": context} if context else {})})
    return out


def last_old_answer_delays(written: list[tuple[int, float]], seen: list[tuple[float, int]]) -> list[float]:
    """Per apply of one scenario (``(version, when)``): seconds from it to the arrival of the last
    answer carrying an older version (0 when none arrived after it): every replica serves the
    version, or a later one, by then."""
    t = np.asarray([s[0] for s in seen], dtype=np.float64)
    v = np.asarray([s[1] for s in seen], dtype=np.int64)
    out = []
    for version, at in written:
        late = t[(t >= at) & (v < version)]
        out.append(float(late.max() - at) if late.size else 0.0)
    return out


def _next_text(store: ScenarioStore, name: str, step: int) -> str:
    """The live file of ``name`` with its ``default_k`` one lower (even steps) or back (odd)."""
    live = next(r["live"] for r in store.listing() if r["name"] == name)
    data = yaml.safe_load(store.text(name, live))
    limits = data.setdefault("limits", {})
    k = int(limits.get("default_k") or 20)
    limits["default_k"] = max(1, k - 1) if step % 2 == 0 else k + 1
    return str(yaml.safe_dump(data, sort_keys=False))


async def _run(url: str, settings: Settings, *, applies: int, gap_s: float, concurrency: int) -> dict[str, Any]:
    from serving.config import DEMO_DATA
    from serving.pipeline.assemble import load_tables

    store = ScenarioStore(settings.model_repository)
    registry = ModelRegistry(settings.model_repository)
    demo = settings.data == DEMO_DATA
    tables = load_tables(settings)
    groups = Catalogue.initial(tables).group_counts()
    names = store.names()
    if not names:
        raise RuntimeError(f"no scenarios in {settings.model_repository}: run rankserve build")
    bodies = mixed_bodies(tables, names) if demo else dataset_bodies_for(settings, tables, names)
    seen: dict[str, list[tuple[float, int]]] = {n: [] for n in names}
    written: list[tuple[str, int, float]] = []

    async def apply(i: int) -> None:
        name = names[i % len(names)]
        text = _next_text(store, name, i // len(names))
        sc = await asyncio.to_thread(store.apply, text, settings, registry, groups)
        written.append((name, sc.version, time.monotonic()))

    load = await timed_changes(
        url, bodies, lambda t, a: seen.setdefault(a["scenario"], []).append(
            (t, int(a["scenario_version"]))), apply, changes=applies, gap_s=gap_s, concurrency=concurrency, settle_s=3.0)
    first = {n: first_answer_delays([(v, t) for m, v, t in written if m == n], seen[n]) for n in names}
    last_old = {n: last_old_answer_delays([(v, t) for m, v, t in written if m == n], seen[n]) for n in names}
    order = {n: 0 for n in names}
    flat, everywhere = [], []
    for m, _, _ in written:  # back in the order they were applied
        flat.append(first[m][order[m]])
        everywhere.append(max(first[m][order[m]], last_old[m][order[m]]))
        order[m] += 1
    return {"delays": flat, "everywhere": everywhere, "scenarios": [m for m, _, _ in written], **load}


def scenario_freshness_report(raw: dict[str, Any], *, target_s: float = 2.0, unit: str = "") -> dict[str, Any]:
    """p50, p90 and max of the delays, overall and per scenario; met when every apply reached
    every replica (``everywhere``) within ``target_s`` and no request failed."""
    d = np.asarray(raw["delays"], dtype=np.float64)
    e = np.asarray(raw.get("everywhere", raw["delays"]), dtype=np.float64)
    names = np.asarray(raw["scenarios"])

    def pct(x: np.ndarray) -> dict[str, float]:
        return {"p50_s": round(float(np.median(x)), 3), "p90_s": round(float(np.quantile(x, 0.9)), 3),
                "max_s": round(float(x.max()), 3)}

    by = {n: {**pct(d[names == n]), "everywhere_max_s": round(float(e[names == n].max()), 3)}
          for n in dict.fromkeys(raw["scenarios"])}
    return {"applies": int(d.size), **pct(d), "everywhere": pct(e), "by_scenario": by, "target_s": target_s,
            "meets_target": bool(e.max() <= target_s and raw["failed"] == 0),
            "load": load_figures(raw), "gap_between_applies_s": raw["gap_s"], "unit": unit}


def run_scenario_freshness(url: str, settings: Settings, args: argparse.Namespace, *, unit: str) -> dict[str, Any]:
    return publish(_run(url, settings, applies=args.applies, gap_s=args.gap_s, concurrency=args.concurrency),
                   scenario_freshness_report, _summary, unit=unit, out=args.out)


def _summary(rep: dict[str, Any]) -> str:
    return (f"scenario freshness: {rep['applies']} applies under {rep['load']['rps']} req/s "
            f"({rep['load']['failed']} failed of {rep['load']['requests']}): apply -> first answer carrying it "
            f"{spread_ms(rep)}; on every replica (no older version answered after): {spread_ms(rep['everywhere'])} "
            f"(target <= {rep['target_s']:g} s with 0 failed: {'met' if rep['meets_target'] else 'MISSED'})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_timing_arguments(p, count="applies", default=30, what="scenario versions to apply and time", gap_s=0.5,
                         load="requests")
    p.add_argument("--replicas", type=int, default=1, help="Serve replicas (each follows the scenarios itself)")
    p.add_argument("--out", type=Path, help="write the report as JSON here")
