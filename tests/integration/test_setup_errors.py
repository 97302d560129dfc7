"""Set-up failures of `rankserve serve` / `build` / `make serve`, each answered in one or two lines
that say what to do, with no traceback (unless --verbose) and nothing left running. Every case is
real: a port really held, a Triton that really fails on a broken model, a cache really damaged,
a real address-space limit, a real old Python."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from serving.config import Settings
from serving.net import QUIET_PORTS, free_port
from serving.triton.digests import record_digests
from tests.waiting import wait_for
from training.preflight import DATA_FILES, Need

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OUR_CODE = f'File "{ROOT / "serving"}'  # a traceback through rankserve's own code


def _carrying(marker: str) -> list[str]:
    """Processes that carry this run's marker in their environment (children inherit it)."""
    left = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.environ().get("RS_SETUP_TEST") == marker:
                left.append(f"{p.info['pid']} {p.info['name']}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return left


def rankserve(*args: str, env: dict[str, str], limit: Callable[[], None] | None = None,
              timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """``rankserve ARGS`` as a new user runs it; asserts that nothing it started outlives it."""
    marker = uuid.uuid4().hex
    proc = subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env, "RS_SETUP_TEST": marker}, preexec_fn=limit, timeout=timeout_s)
    wait_for(lambda: not _carrying(marker), lambda: f"nothing outlives the refusal: {_carrying(marker)} left running",
             timeout_s=30, poll_s=0.5)
    return proc


def _short_answer(proc: subprocess.CompletedProcess[str], status: int) -> list[str]:
    """The refusal's lines: the exit status, at most two lines on stderr, nothing else, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, proc.stderr[-3000:]
    assert 1 <= len(lines) <= 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return lines


def _ports(**held: int) -> dict[str, str]:
    return {"RANKSERVE_PORT": str(free_port(QUIET_PORTS)), "RANKSERVE_GRPC_PORT": "0",
            **{k: str(v) for k, v in held.items()}}


@pytest.mark.parametrize("setting", ["RANKSERVE_PORT", "RANKSERVE_GRPC_PORT"])
def test_a_port_in_use_names_the_setting_to_change(setting: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port(QUIET_PORTS)))
        held.listen()
        port = held.getsockname()[1]
        t0 = time.monotonic()
        proc = rankserve("serve", "--no-build", env=_ports(**{setting: port}))
    first, hint = _short_answer(proc, 2)
    assert f"127.0.0.1:{port} is in use by pid {os.getpid()}" in first
    assert re.fullmatch(rf"  set {setting} to a free port \(e\.g\. {setting}=\d+ make serve\) or stop that process",
                        hint), hint
    assert time.monotonic() - t0 < 60  # refused before anything started


@pytest.mark.parametrize("command", [("serve", "--no-build"), ("bench",)])
def test_a_ray_cluster_that_does_not_answer_is_refused_at_once_naming_the_setting(command: tuple[str, ...]) -> None:
    t0 = time.monotonic()
    nobody = free_port(QUIET_PORTS)
    proc = rankserve(*command, env={**_ports(), "RANKSERVE_RAY_ADDRESS": f"127.0.0.1:{nobody}"})
    first, hint = _short_answer(proc, 4)
    assert first == f"rankserve {command[0]}: no Ray cluster answers at 127.0.0.1:{nobody} (connection refused)"
    assert "RANKSERVE_RAY_ADDRESS=local" in hint
    assert time.monotonic() - t0 < 60  # not Ray's minutes of retries


def _broken_repository(settings: Settings, dest: Path, *, recorded: bool = True) -> Path:
    """A copy whose live ranker is not TorchScript: as written (``recorded``: its digests say so,
    Triton tries it and fails) or changed afterwards (rankserve refuses it before Triton sees it)."""
    shutil.copytree(settings.model_repository, dest, ignore=shutil.ignore_patterns(".*"))
    live = json.loads((dest / "ranker" / "traffic.json").read_text())["live"]
    (dest / "ranker" / str(live) / "model.pt").write_bytes(b"this is not TorchScript")
    if recorded:
        record_digests(dest / "ranker" / str(live))
    return dest


def test_a_version_changed_after_it_was_written_is_refused_naming_the_file(settings: Settings,
                                                                            tmp_path: Path) -> None:
    env = {**_ports(), "RANKSERVE_MODEL_REPOSITORY": str(_broken_repository(settings, tmp_path / "repo",
                                                                             recorded=False))}
    proc = rankserve("serve", "--no-build", env=env)
    assert proc.returncode == 4, proc.stderr[-3000:]
    first = proc.stderr.strip().splitlines()[0]
    assert re.match(r"rankserve serve: ranker is not loaded: ranker/\d+/model.pt: differs from what was written",
                    first), first
    assert OUR_CODE not in proc.stderr and proc.stdout == ""


@pytest.mark.slow  # 18 s: a Triton that fails to start, answered twice (make slow-test)
def test_triton_that_does_not_start_is_answered_with_its_log_tail(settings: Settings, tmp_path: Path) -> None:
    env = {**_ports(), "RANKSERVE_MODEL_REPOSITORY": str(_broken_repository(settings, tmp_path / "repo"))}
    proc = rankserve("serve", "--no-build", env=env)
    assert proc.returncode == 4, proc.stderr[-3000:]
    first, *tail, hint = proc.stderr.strip().splitlines()
    assert first.startswith("rankserve serve: Triton did not start: a model did not load"), first
    assert 1 <= len(tail) <= 10 and all(ln.startswith("    ") for ln in tail)
    assert any("ranker" in ln for ln in tail), tail  # Triton's own words about the model that failed
    assert hint.startswith("  Triton's whole log: ") and "rankserve build --force" in hint
    assert Path(hint.split("Triton's whole log: ")[1].split(". A model")[0]).is_file()
    assert OUR_CODE not in proc.stderr and proc.stdout == ""
    # --verbose: the same answer after rankserve's own log and the traceback
    loud = rankserve("serve", "--no-build", "--verbose", env=env)
    assert loud.returncode == 4 and OUR_CODE in loud.stderr and "INFO serving.triton.process: starting Triton" \
        in loud.stderr
    assert loud.stderr.strip().splitlines()[-1].startswith("  Triton's whole log: ")


def _cache_copy(settings: Settings, data_dir: Path) -> Path:
    """A data dir whose cache is the session's (files linked), to damage one file of."""
    (data_dir / "data").mkdir(parents=True)
    for name in (*DATA_FILES, "build.json"):
        (data_dir / "data" / name).symlink_to(settings.marketplace_path.parent / name)
    return data_dir / "data"


@pytest.mark.parametrize("damage", ["damaged", "another version"])
def test_a_damaged_or_foreign_build_cache_says_how_to_rebuild(settings: Settings, tmp_path: Path,
                                                              damage: str) -> None:
    data = _cache_copy(settings, tmp_path / "rankserve")
    if damage == "damaged":
        blob = (data / "marketplace.npz").read_bytes()
        (data / "marketplace.npz").unlink()
        (data / "marketplace.npz").write_bytes(blob[: len(blob) // 3])
    else:
        summary = json.loads((data / "build.json").read_text())
        (data / "build.json").unlink()
        (data / "build.json").write_text(json.dumps({**summary, "format": 99}))
    proc = rankserve("serve", env={**_ports(), "RANKSERVE_DATA_DIR": str(tmp_path / "rankserve")})
    first, hint = _short_answer(proc, 4)
    expected = "is damaged: marketplace.npz" if damage == "damaged" else "was written by another rankserve version"
    assert expected in first, first
    assert hint == "  rebuild it: rankserve build --force (in a checkout: .venv/bin/rankserve build --force)"


def _address_space_limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GB: the CLI starts, a build would not fit


@pytest.mark.parametrize("short_of", ["disk", "memory"])
def test_a_build_that_does_not_fit_is_refused_before_it_starts(tmp_path: Path, short_of: str) -> None:
    env = {"RANKSERVE_DATA_DIR": str(tmp_path / "rankserve"), "RANKSERVE_MODEL_REPOSITORY": str(tmp_path / "repo")}
    if short_of == "disk":  # twice the catalogue this disk holds
        scale = int(2 * Need(1).largest_scale("disk", shutil.disk_usage(tmp_path).free)) + 1
        proc = rankserve("build", "--items", str(scale * Need.DEFAULT_ITEMS), env=env)
    else:
        proc = rankserve("build", "--force", env=env, limit=_address_space_limit)
    first, hint = _short_answer(proc, 4)
    assert first.startswith("rankserve build: the build of")
    if short_of == "disk":
        assert f"of disk under {tmp_path}" in first or "of disk under /" in first
        assert "RANKSERVE_DATA_DIR" in hint
    else:
        assert "of address space" in first and "(ulimit -v)" in first and "ulimit -v unlimited" in hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rankserve"]  # its log only: no data, no repository
    assert [p.name for p in (tmp_path / "rankserve").iterdir()] == ["logs"]


def _unsupported_python() -> str | None:
    """An interpreter outside 3.10-3.13 on this machine (PATH, then pyenv's versions)."""
    names = ("python3.9", "python3.8", "python3.14", "python3.15")
    found = [shutil.which(n) for n in names]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found += [str(p) for v in ("3.9", "3.8", "3.14") for p in sorted(pyenv.glob(f"{v}.*/bin/python3"))]
    for path in filter(None, found):
        out = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] >= (3, 8))"], capture_output=True,
                             text=True)
        if out.returncode == 0 and out.stdout.strip() == "True":
            return path
    return None


OLD_PYTHON = _unsupported_python()


@pytest.mark.skipif(OLD_PYTHON is None, reason="no Python outside 3.10-3.13 on this machine (looked for "
                                                "python3.8/3.9/3.14 on PATH and under pyenv)")
def test_an_unsupported_python_is_answered_before_anything_is_installed(tmp_path: Path) -> None:
    assert OLD_PYTHON is not None
    # the first thing a new user runs: make serve, with an old python3
    make = subprocess.run(["make", "serve", f"PYTHON={OLD_PYTHON}", f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert make.returncode != 0 and not (tmp_path / "venv").exists()
    ours = [ln for ln in make.stderr.splitlines() if not ln.startswith("make")]
    assert len(ours) == 1 and "rankserve runs on Python 3.10 to 3.13" in ours[0], make.stderr
    assert "make serve PYTHON=python3.13" in ours[0]
    # and the command itself, run by that Python from the checkout
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cli = subprocess.run([OLD_PYTHON, "-m", "serving.cli", "serve"], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=120)
    first, hint = _short_answer(cli, 4)
    assert "rankserve runs on Python 3.10 to 3.13" in first and "PYTHON=python3.13" in hint
