"""What a person sees on the terminal: rankserve's own screen, progress bars, and a quiet start
that sends everything else to a log file.

Owns: the console (rich) that rankserve writes its own screen to (:func:`console`, and
:func:`error_console` for errors), progress bars and a spinner on it (:func:`progress`,
:func:`task`, :func:`status`; drawn only when that console is a terminal), the log handler that shows log records there
(:class:`ConsoleHandler`), and :func:`quiet`, which points the process's stdout and stderr file
descriptors at a log file while a command runs (so Ray's actor logs, FAISS's loader, uvicorn,
native libraries and child processes write there) while the consoles keep the terminal.
Must not touch: what modules log, logging's configuration (the CLI's), anything above the bottom
layer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.spinner import Spinner

__all__ = ["ConsoleHandler", "Task", "console", "error_console", "progress", "quiet", "status", "task"]

_consoles: dict[str, Console] = {}
_bars: Progress | None = None


def console() -> Console:
    """The console for rankserve's own screen (stdout, or the terminal's stdout inside :func:`quiet`)."""
    if "out" not in _consoles:
        _consoles["out"] = Console(highlight=False)
    return _consoles["out"]


def error_console() -> Console:
    """The console for errors (stderr, or the terminal's stderr inside :func:`quiet`)."""
    if "err" not in _consoles:
        _consoles["err"] = Console(stderr=True, highlight=False)
    return _consoles["err"]


class ConsoleHandler(logging.Handler):
    """Log records on :func:`console` (above any progress bars, which a plain stream would tear)."""

    def __init__(self, level: int = logging.NOTSET, *, stderr: bool = False) -> None:
        super().__init__(level)
        self.stderr = stderr

    def emit(self, record: logging.LogRecord) -> None:
        try:
            out = error_console() if self.stderr else console()
            out.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging never raises into the caller
            self.handleError(record)


class Task:
    """One progress bar; without a drawn display every call does nothing."""

    def __init__(self, bars: Progress | None = None, task_id: TaskID | None = None) -> None:
        self._bars = bars
        self._id = task_id

    @property
    def drawn(self) -> bool:
        return self._bars is not None

    def advance(self, n: float = 1.0) -> None:
        if self._bars is not None and self._id is not None:
            self._bars.advance(self._id, n)

    def describe(self, description: str) -> None:
        if self._bars is not None and self._id is not None:
            self._bars.update(self._id, description=description)

    def finish(self) -> None:
        if self._bars is not None and self._id is not None:
            total = self._bars.tasks[self._bars.task_ids.index(self._id)].total
            self._bars.update(self._id, total=total or 1, completed=total or 1)


@contextlib.contextmanager
def progress() -> Iterator[None]:
    """One display for the bars of every :func:`task` opened inside (nested calls share it).
    Nothing is drawn when the console is not a terminal (a pipe, a file, a test)."""
    global _bars
    if _bars is not None or not console().is_terminal:
        yield
        return
    # no redirection of sys.stdout/sys.stderr: inside quiet() what others print belongs in the log file
    bars = Progress(TextColumn("{task.description:<28}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                    console=console(), redirect_stdout=False, redirect_stderr=False)
    _bars = bars
    try:
        with bars:
            yield
    finally:
        _bars = None


@contextlib.contextmanager
def task(description: str, total: float | None = None) -> Iterator[Task]:
    """A progress bar of ``total`` steps (none: an indeterminate one), completed when the block ends."""
    with progress():
        if _bars is None:
            yield Task()
            return
        bar = Task(_bars, _bars.add_task(description, total=total))
        try:
            yield bar
        finally:
            bar.finish()


@contextlib.contextmanager
def status(text: str) -> Iterator[None]:
    """A spinner with ``text`` on the console while the block runs (nothing when not a terminal);
    it leaves no line behind."""
    if not console().is_terminal:
        yield
        return
    with Live(Spinner("dots", text), console=console(), transient=True, redirect_stdout=False,
              redirect_stderr=False, refresh_per_second=8):
        yield


def _terminal_file(fd: int) -> TextIO:
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")


@contextlib.contextmanager
def quiet(log_path: Path) -> Iterator[Path]:
    """Point file descriptors 1 and 2 at ``log_path`` (appended) for the ``with`` body; the
    consoles keep writing to the terminal (the descriptors as they were). Child processes
    started inside inherit the log file. Everything is put back when the body ends."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    out_file, err_file = _terminal_file(1), _terminal_file(2)
    saved = {1: os.dup(1), 2: os.dup(2)}
    previous = dict(_consoles)
    _consoles["out"] = Console(file=out_file, highlight=False)
    _consoles["err"] = Console(file=err_file, highlight=False)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    try:
        yield log_path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for target, copy in saved.items():
            os.dup2(copy, target)
            os.close(copy)
        _consoles.clear()
        _consoles.update(previous)
        out_file.close()
        err_file.close()
