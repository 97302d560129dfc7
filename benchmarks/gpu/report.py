"""The GPU check's report: its last line and its markdown table, from the report dictionary.

Owns: the wording of ``gpu-check:`` (the one line a caller parses) and of ``gpu-check.md``.
Must not touch: measuring or any process (``benchmarks.gpu.check`` fills the report).

``triton=`` on the last line is read from the instance groups Triton was started with and from the
instances' own words: ``KIND_GPU`` only when both models' instances ran on CUDA and the GPU showed
it (``KIND_GPU_NOT_USED`` otherwise), ``KIND_CPU`` in a dry run, ``FAILED`` when Triton did not
serve. Figures are ``none`` when their step produced nothing.
"""

from __future__ import annotations

from typing import Any

from benchmarks.gpu.probe import STAGES, headline

__all__ = ["final_line", "markdown"]

WAYS = ("inprocess", "triton")


def _headlines(report: dict[str, Any], p99_target_ms: float) -> dict[str, dict[str, Any] | None]:
    pipelines = report.get("pipelines") or {}
    return {w: headline((pipelines.get(w) or {}).get("points") or [], p99_target_ms) for w in WAYS}


def _triton_word(report: dict[str, Any]) -> str:
    tri = report.get("triton") or {}
    kinds = {str(k) for k in (tri.get("instance_kinds") or {}).values()}
    if "triton" in (report.get("errors") or {}) or not kinds or "score_check" not in tri:
        return "FAILED"
    if kinds == {"KIND_GPU"}:
        return "KIND_GPU" if tri.get("gpu_used") else "KIND_GPU_NOT_USED"
    return "+".join(sorted(kinds))


def final_line(report: dict[str, Any], *, dry: bool, p99_target_ms: float) -> str:
    """``gpu-check: triton=.. scores_match=.. pipeline_inprocess_cand_per_s=.. pipeline_triton_cand_per_s=.. p99_ms=..``
    (``dry_run=true`` after the colon in a dry run)."""
    heads = _headlines(report, p99_target_ms)
    report["headline"] = heads
    match = bool(((report.get("triton") or {}).get("score_check") or {}).get("match"))

    def cand(way: str) -> str:
        h = heads[way]
        return f"{h['candidates_per_s']:.0f}" if h else "none"

    tri = heads["triton"]
    p99 = f"{tri['p99_ms']:.1f}" if tri else "none"
    return (f"gpu-check: {'dry_run=true ' if dry else ''}triton={_triton_word(report)} "
            f"scores_match={'true' if match else 'false'} pipeline_inprocess_cand_per_s={cand('inprocess')} "
            f"pipeline_triton_cand_per_s={cand('triton')} p99_ms={p99}")


def _point_rows(report: dict[str, Any]) -> list[str]:
    rows = ["| way | candidates/request | batch | req/s | candidates/s | p50 ms | p99 ms | "
            + " | ".join(f"{s} %" for s in (*STAGES, "other")) + " | failures |",
            "|---|---|---|---|---|---|---|" + "---|" * (len(STAGES) + 1) + "---|"]
    for way in WAYS:
        for p in ((report.get("pipelines") or {}).get(way) or {}).get("points") or []:
            shares = " | ".join(f"{100 * p['stage_share'][s]:.0f}" for s in (*STAGES, "other"))
            rows.append(f"| {way} | {p['candidates']} | {p['batch']} | {p['rps']:,.0f} | {p['candidates_per_s']:,.0f} | "
                        f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {shares} | {p['failures']} |")
    return rows


def _goal_lines(report: dict[str, Any], goal_cand_per_s: float, p99_target_ms: float) -> list[str]:
    lines = [f"Goal: {goal_cand_per_s:,.0f} candidates/s per GPU at p99 <= {p99_target_ms:g} ms."]
    for way, h in (report.get("headline") or {}).items():
        if not h:
            lines.append(f"- {way}: no point without failures")
            continue
        met = "meets" if h["meets_p99_target"] else "no point meets"
        lines.append(f"- {way}: best {h['candidates_per_s']:,.0f} candidates/s ({100 * h['candidates_per_s'] / goal_cand_per_s:.1f}% "
                     f"of the goal) at {h['candidates']} candidates x batch {h['batch']}, p99 {h['p99_ms']:.1f} ms "
                     f"({met} the p99 target); time: " + ", ".join(
                         f"{s} {100 * h['stage_share'][s]:.0f}%" for s in (*STAGES, "other")))
    return lines


def _step_lines(report: dict[str, Any]) -> list[str]:
    env = report.get("environment") or {}
    v = env.get("versions") or {}
    tri = report.get("triton") or {}
    build = report.get("build") or {}
    not_run = "skipped (dry run)" if report.get("dry_run") else "not run"
    lines = [f"- machine: {env.get('gpu', 'no GPU (dry run)')}; python {v.get('python')}, torch {v.get('torch')} "
             f"(CUDA {env.get('torch_cuda')}), numpy {v.get('numpy')}, cupy {v.get('cupy-cuda13x') or v.get('cupy-cuda12x')}, "
             f"numba {v.get('numba')}, tritonclient {v.get('tritonclient')}, nvidia-pytriton {v.get('nvidia-pytriton')}",
             f"- build without FAISS: {build.get('wall_s')} s, quality {build.get('quality')}",
             f"- GPU tests: {(report.get('gpu_tests') or {}).get('summary', not_run)}",
             f"- kernel bench: {(report.get('kernel_bench') or {}).get('best', not_run)}",
             f"- crossing backend: {env.get('cross_backend')}; recall: exact search with torch on the "
             f"{'CPU' if report.get('dry_run') else 'GPU'} (torch_exact, not FAISS)",
             f"- Triton: instance kinds {tri.get('instance_kinds')}, instances run on {tri.get('instance_devices')}, "
             f"start {tri.get('start_s')} s",
             f"- GPU memory (MiB, source): before Triton {tri.get('memory_before_mib')}, models loaded "
             f"{tri.get('memory_loaded_mib')}; during the Triton sweep {tri.get('gpu_during_sweep')}; "
             f"compute apps {tri.get('compute_apps')}; GPU used by Triton: {tri.get('gpu_used')}",
             f"- served scores vs TorchScript on the CPU: {tri.get('score_check')}",
             f"- imported: {report.get('imports')}; wall {report.get('wall_s')} s of a {report.get('budget_s')} s budget"]
    return lines


def markdown(report: dict[str, Any], *, goal_cand_per_s: float, p99_target_ms: float) -> str:
    """``gpu-check.md``: the last line, the steps, the goal and one row per measured point."""
    title = "GPU check (dry run on a CPU machine: GPU steps skipped)" if report.get("dry_run") else "GPU check"
    parts = [f"# {title}, {report.get('started')}", "", "```", str(report.get("final_line")), "```", "",
             *_step_lines(report), "", *_goal_lines(report, goal_cand_per_s, p99_target_ms), "",
             "Latency is per batch (every request of a batch waits for the whole batch); stage shares are of "
             "the summed batch latency (recall = user tower + exact search, cross = features + crossing, "
             "rank = ranker calls).", "", *_point_rows(report), ""]
    skipped = report.get("skipped") or []
    if skipped:
        parts += ["Skipped:", *[f"- {s['step']}: {s['why']}" for s in skipped], ""]
    errors = report.get("errors") or {}
    if errors:
        parts += ["Errors:", *[f"- {k}: {v}" for k, v in errors.items()], ""]
    return "\n".join(parts)
