"""The bench and capacity plots, drawn from the committed real runs (docs/*-cpu.json): every
configuration is a line with the report's own figures, floors dashed; the capacity plot marks the
p99 target and the chosen capacity; the measurement pages show both pictures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.plots import BENCH_LABELS, plot_bench, plot_capacity

ROOT = Path(__file__).resolve().parents[2]
BENCH = json.loads((ROOT / "docs" / "bench-cpu.json").read_text())
CAPACITY = json.loads((ROOT / "docs" / "capacity-cpu.json").read_text())


def _lines(ax: object) -> dict[str, object]:
    return {line.get_gid(): line for line in ax.get_lines()}  # type: ignore[attr-defined]


def test_bench_plot_has_one_line_per_configuration_with_the_report_s_figures() -> None:
    fig = plot_bench(BENCH)
    rps_ax, p99_ax = fig.axes
    assert set(_lines(rps_ax)) == set(BENCH["results"]) == set(BENCH_LABELS)
    for key, rows in BENCH["results"].items():
        rps, p99 = _lines(rps_ax)[key], _lines(p99_ax)[key]
        assert list(rps.get_xdata()) == [r["concurrency"] for r in rows]  # type: ignore[attr-defined]
        assert list(rps.get_ydata()) == pytest.approx([r["rps"] for r in rows])  # type: ignore[attr-defined]
        assert list(p99.get_ydata()) == pytest.approx([r["p99_ms"] for r in rows])  # type: ignore[attr-defined]
        assert (rps.get_linestyle() == "--") == BENCH_LABELS[key][1]  # type: ignore[attr-defined]


def test_capacity_plot_marks_the_target_and_the_capacity() -> None:
    fig = plot_capacity(CAPACITY)
    (ax,) = fig.axes
    lines = _lines(ax)
    assert list(lines["target"].get_ydata()) == [CAPACITY["target"]["p99_ms"]] * 2  # type: ignore[attr-defined]
    assert list(lines["capacity"].get_xdata()) == [CAPACITY["capacity_rps"]] * 2  # type: ignore[attr-defined]
    steps = sorted(CAPACITY["steps"], key=lambda s: s["offered_rps"])
    assert list(lines["p99_ms"].get_ydata()) == [s["p99_ms"] for s in steps]  # type: ignore[attr-defined]
    points = {c.get_gid(): len(c.get_offsets()) for c in ax.collections}
    assert points == {"met": sum(s["verdict"] is None for s in steps),
                      "missed": sum(s["verdict"] is not None for s in steps)}


@pytest.mark.parametrize(("module", "report"), [("bench", "bench-cpu.json"), ("capacity", "capacity-cpu.json")])
def test_a_committed_report_is_drawn_again_from_the_command_line(module: str, report: str, tmp_path: Path) -> None:
    out = tmp_path / "plot.png"
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--plot", str(ROOT / "docs" / report),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


@pytest.mark.parametrize(("page", "picture"), [("docs/measurements/serving.md", "../bench-cpu.png"),
                                               ("docs/operations/capacity.md", "../capacity-cpu.png")])
def test_the_docs_show_both_pictures(page: str, picture: str) -> None:
    assert f"]({picture})" in (ROOT / page).read_text() and (ROOT / page).parent.joinpath(picture).is_file()
