"""The terminal: progress bars only on a terminal, and a quiet command's output split between the
screen (rankserve's own) and the log file (everything else, child processes included)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from serving import terminal

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The console as a terminal that writes into a buffer."""
    buf = io.StringIO()
    monkeypatch.setitem(terminal._consoles, "out", Console(file=buf, force_terminal=True, width=100))
    return buf


def test_progress_bars_are_drawn_on_a_terminal(screen: io.StringIO) -> None:
    with terminal.progress():
        with terminal.task("train ranker", total=4) as bar:
            assert bar.drawn
            for _ in range(4):
                bar.advance()
        with terminal.task("FAISS index") as spin:  # no total: finished at the end of its block
            spin.describe("FAISS index: nprobe 64")
    out = screen.getvalue()
    assert "train ranker" in out and "FAISS index: nprobe 64" in out and "100%" in out


def test_nothing_is_drawn_when_the_output_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setitem(terminal._consoles, "out", Console(file=buf))  # a StringIO is no terminal
    with terminal.task("train ranker", total=3) as bar, terminal.status("starting"):
        assert not bar.drawn
        bar.advance()
        bar.describe("train ranker 2/3")
    assert buf.getvalue() == ""


_QUIET = textwrap.dedent("""
    import logging, os, subprocess, sys
    from pathlib import Path
    from serving import terminal
    with terminal.quiet(Path(sys.argv[1])):
        terminal.console().print("the screen line")
        terminal.error_console().print("the error line")
        print("a library's print", flush=True)
        logging.basicConfig(level=logging.INFO)
        logging.getLogger("faiss.loader").info("Loading faiss with AVX2 support.")
        os.write(2, b"native stderr\\n")
        subprocess.run([sys.executable, "-c", "print('a child process')"], check=True)
    print("after: back on stdout")
""")


def test_quiet_sends_everything_but_rankserve_s_screen_to_the_log_file(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "serve.log"
    proc = subprocess.run([sys.executable, "-c", _QUIET, str(log)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["the screen line", "after: back on stdout"]
    assert proc.stderr.splitlines() == ["the error line"]
    logged = log.read_text()
    for line in ("a library's print", "Loading faiss with AVX2 support.", "native stderr", "a child process"):
        assert line in logged
    assert "the screen line" not in logged
