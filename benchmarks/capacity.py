"""``rankserve capacity``: the highest request rate one serving unit sustains at a p99 target,
and how many units a given peak needs.

Owns: the capacity search, its report and the plan. Must not touch: the server's internals.

Load is open loop (``loadtest.loadgen --rate``): requests arrive as a Poisson process whatever the
server does, and latency runs from each request's scheduled arrival, so queueing is counted (a
closed loop at fixed concurrency hides it). The search raises the rate by ``growth`` while a
step passes, then bisects between the last rate that passed and the first that failed. A step
passes when its p99 is within the target and at most ``max_error_share`` of its requests failed
(503 sheds, 504 deadlines and client-side overflow count as failures).

One unit is what answered the load: the embedded default on this machine (one Triton, one Serve
replica), or, with ``--url``, whatever serves that address. The requests are those of the data set
``settings.data`` (``--data``: the demo, or an imported one in its schema's ids, with contexts
from its impressions; ``loadtest.workload.request_bodies``); with ``--url`` the server there
must serve that data set. Units needed for a peak:
``ceil(peak / (capacity * (1 - headroom)))``, on the assumption, stated in the report, that
units scale out independently (each node its own Triton and replicas, as in the KubeRay manifest).
Besides the JSON and markdown report it draws ``capacity.png``: latency against offered rate with
the p99 target and the chosen capacity marked (``python -m benchmarks.capacity --plot
capacity.json`` draws a report's plot again).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.plots import plot_capacity, redraw
from loadtest.workload import request_bodies, run_loadgen, write_bodies
from serving.config import Settings

__all__ = ["Step", "Target", "main", "measure_rate", "plan_units", "search_capacity"]


@dataclass(frozen=True)
class Target:
    """What a step must meet to count as sustained."""

    p99_ms: float
    max_error_share: float = 0.001

    def check(self, step: Step) -> str | None:
        """``None`` when ``step`` meets the target, else why not."""
        if step.requests == 0:
            return "no requests were sent"
        share = step.failures / step.requests
        if share > self.max_error_share:
            return f"{step.failures} of {step.requests} failed ({share:.2%} > {self.max_error_share:.2%})"
        if not step.p99_ms <= self.p99_ms:
            return f"p99 {step.p99_ms:.1f} ms > {self.p99_ms:g} ms"
        return None


@dataclass(frozen=True)
class Step:
    """One open-loop step at an offered ``rate`` (requests/s)."""

    rate: float
    offered_rps: float
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    generator_late_p99_ms: float = 0.0
    verdict: str | None = None

    @classmethod
    def from_loadgen(cls, res: dict[str, Any]) -> Step:
        return cls(rate=float(res["rate"]), offered_rps=float(res["offered_rps"]), requests=int(res["requests"]),
                   failures=int(res["failures"]), rps=float(res["rps"]), p50_ms=float(res["p50_ms"]),
                   p95_ms=float(res["p95_ms"]), p99_ms=float(res["p99_ms"]),
                   generator_late_p99_ms=float(res.get("generator_late_p99_ms", 0.0)))


def search_capacity(measure: Callable[[float], Step], target: Target, *, start_rps: float,
                    max_rps: float, growth: float = 1.5, refine: int = 3,
                    confirm: bool = True) -> tuple[float, list[Step]]:
    """Highest rate that met ``target`` (0.0 when even ``start_rps`` did not) and every step taken.

    With ``confirm``, a rate fails only when a second step at it fails too: the p99 of a short
    step on a shared machine can be one hiccup (a few slow requests), and one such step would
    otherwise end the search far below the real capacity. Both steps are reported.
    """
    if not (start_rps > 0 and max_rps >= start_rps and growth > 1 and refine >= 0):
        raise ValueError("need 0 < start_rps <= max_rps, growth > 1, refine >= 0")
    steps: list[Step] = []

    def once(rate: float) -> bool:
        step = measure(rate)
        verdict = target.check(step)
        steps.append(replace(step, verdict=verdict))
        return verdict is None

    def run(rate: float) -> bool:
        return once(rate) or (confirm and once(rate))

    passed, failed = 0.0, math.inf
    rate = start_rps
    while True:
        if run(rate):
            passed = rate
        else:
            failed = rate
            break
        if rate >= max_rps:
            break
        rate = min(rate * growth, max_rps)
    if passed == 0.0:
        return 0.0, steps
    for _ in range(refine if failed < math.inf else 0):
        mid = (passed + failed) / 2
        if run(mid):
            passed = mid
        else:
            failed = mid
    return passed, steps


def plan_units(capacity_rps: float, peak_rps: float, headroom: float) -> int:
    """Serving units for ``peak_rps`` when each runs at most ``1 - headroom`` of its capacity."""
    if not 0 <= headroom < 1:
        raise ValueError("headroom must be in [0, 1)")
    if capacity_rps <= 0:
        raise ValueError("a unit that sustains no load cannot be planned with")
    return max(1, math.ceil(peak_rps / (capacity_rps * (1 - headroom))))


def measure_rate(url: str, bodies_file: Path, rate: float, duration_s: float, warmup_s: float = 2.0,
                 max_in_flight: int = 512) -> Step:
    """One open-loop step by ``loadtest.loadgen`` in its own process (its ``rate`` is the one asked
    for, not the generator's rounded echo of it, so the search can find its steps again)."""
    res = run_loadgen(url, bodies_file, duration_s=duration_s, concurrency=max_in_flight, warmup_s=warmup_s,
                      rate=rate, seed=round(rate * 1000))
    return replace(Step.from_loadgen(res), rate=rate)


def report(rate: float, steps: list[Step], target: Target, *, unit: str, peak_rps: float | None,
           headroom: float, recall_n: int) -> dict[str, Any]:
    """Capacity is the offered rate actually drawn at the best passing step (a Poisson draw of 10 s
    differs from its nominal ``rate`` by a few percent)."""
    best = [s for s in steps if s.rate == rate and s.verdict is None]
    capacity = best[-1].offered_rps if best else 0.0
    units = plan_units(capacity, peak_rps, headroom) if peak_rps and capacity > 0 else None
    return {"unit": unit, "target": asdict(target), "capacity_rps": capacity,
            "capacity_candidates_per_s": round(capacity * recall_n), "peak_rps": peak_rps, "headroom": headroom,
            "units_for_peak": units, "steps": [asdict(s) for s in steps]}


def markdown(rep: dict[str, Any]) -> str:
    t = rep["target"]
    lines = [f"Unit: {rep['unit']}. Target: p99 <= {t['p99_ms']:g} ms, failures <= {t['max_error_share']:.2%}.", "",
             "| rate req/s | offered (Poisson draw) | answered req/s | p50 ms | p95 ms | p99 ms | failures "
             "| generator late p99 ms | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in rep["steps"]:
        lines.append(f"| {s['rate']:.1f} | {s['offered_rps']:.1f} | {s['rps']:.1f} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | "
                     f"{s['failures']}/{s['requests']} | {s['generator_late_p99_ms']:.1f} | "
                     f"{s['verdict'] or 'meets target'} |")
    if rep["capacity_rps"] > 0:
        lines += ["", f"Capacity: {rep['capacity_rps']:.1f} req/s per unit "
                      f"({rep['capacity_candidates_per_s']:,} candidates/s) at the target."]
    else:
        lines += ["", "Capacity: none measured: even the first step missed the target "
                      "(lower --start-rps, or relax --p99-ms)."]
    if rep["units_for_peak"] is not None:
        lines.append(f"A peak of {rep['peak_rps']:g} req/s with {rep['headroom']:.0%} headroom needs "
                     f"{rep['units_for_peak']} unit(s): ceil(peak / (capacity * (1 - headroom))), assuming units "
                     f"scale out independently (each node its own Triton and replicas).")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="a running rankserve on loopback (default: start the embedded one here)")
    p.add_argument("--p99-ms", type=float, default=100.0, help="p99 latency target")
    p.add_argument("--max-error-share", type=float, default=0.001, help="most failures a step may have")
    p.add_argument("--start-rps", type=float, default=20.0)
    p.add_argument("--max-rps", type=float, default=5000.0)
    p.add_argument("--growth", type=float, default=1.5, help="rate factor between steps until one fails")
    p.add_argument("--refine", type=int, default=3, help="bisection steps after the first failure")
    p.add_argument("--step-s", type=float, default=10.0, help="measured seconds per step (after 2 s warm-up)")
    p.add_argument("--peak-rps", type=float, help="plan: units needed for this peak")
    p.add_argument("--headroom", type=float, default=0.3, help="plan: share of capacity kept free")
    p.add_argument("--out", type=Path, default=Path("bench/capacity"), help="output directory")


def run_capacity(url: str, settings: Settings, args: argparse.Namespace, *, unit: str) -> dict[str, Any]:
    """Search, print and write ``capacity.json`` / ``capacity.md`` under ``args.out``."""
    bodies_file = write_bodies(request_bodies(settings, 4096))
    target = Target(p99_ms=args.p99_ms, max_error_share=args.max_error_share)

    def measure(rate: float) -> Step:
        step = measure_rate(f"{url}/v1/rank", bodies_file, rate, args.step_s)
        print(f"rate {rate:.1f}/s: answered {step.rps:.1f}/s, p99 {step.p99_ms:.1f} ms, "
              f"failures {step.failures}/{step.requests}", flush=True)
        return step

    rate, steps = search_capacity(measure, target, start_rps=args.start_rps, max_rps=args.max_rps,
                                      growth=args.growth, refine=args.refine)
    rep = {"data_set": settings.data, **report(rate, steps, target, unit=unit, peak_rps=args.peak_rps,
                                               headroom=args.headroom, recall_n=settings.recall_n)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capacity.json").write_text(json.dumps(rep, indent=2))
    md = markdown(rep)
    (args.out / "capacity.md").write_text(md)
    plot_capacity(rep, args.out / "capacity.png")
    print(md)
    print(f"plot: {args.out / 'capacity.png'}")
    return rep


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.capacity --plot capacity.json [--out capacity.png]``: draw a report's plot again."""
    return redraw("python -m benchmarks.capacity", main.__doc__, plot_capacity, "capacity.json", argv)


if __name__ == "__main__":
    sys.exit(main())
