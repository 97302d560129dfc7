"""The embedded Triton: the ``tritonserver`` binary from the ``nvidia-pytriton`` wheel as a child.

Owns: the ``tritonserver`` child process (binary, backends, environment, ports, readiness, stop).
Must not touch: model files (beyond the instance settings of ``config.pbtxt`` at start) or requests.

Facts this module relies on (Triton 2.51, python backend, each verified by running it):

* the python backend stub for the running interpreter must sit in ``backends/python/`` as
  ``triton_python_backend_stub``; we copy the wheel's ``backends/`` into a runtime dir we own;
* ``LD_LIBRARY_PATH`` starts with the interpreter's ``LIBDIR`` (its libpython), then the wheel's
  ``nvidia_pytriton.libs``;
* the stub ignores ``PYTHONPATH`` and runs in the environment whose ``bin/`` is first on ``PATH``:
  we put ``sys.prefix/bin`` first so models import this venv's torch;
* listeners bind 0.0.0.0 unless told otherwise: we bind 127.0.0.1.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from serving.errors import IntegrityError, RankserveError, TritonStartError
from serving.files import pid_alive
from serving.net import free_port
from serving.triton.client import KEY_HEADER
from serving.triton.config import apply_instance_settings
from serving.triton.digests import refresh_runners

if TYPE_CHECKING:
    from serving.triton.client import TritonClient

__all__ = ["TritonProcess", "TritonStartError", "find_tritonserver"]

log = logging.getLogger(__name__)

_FATAL_LOG_TEXT = "error while loading shared libraries"
_ERROR_LINE = re.compile(r"^(E\d{4} |error: )")


def _pytriton_dir() -> Path:
    """Where the ``nvidia-pytriton`` wheel's ``pytriton`` package lies, found without importing it:
    its ``__init__`` imports PyTriton's Python API and its needs (zmq, sh, wrapt), none of which
    rankserve uses (the GPU check carries the wheel without them to a bare image)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonStartError("nvidia-pytriton is not installed: it ships the tritonserver binary")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _wheel_dir() -> Path:
    return _pytriton_dir() / "tritonserver"


def find_tritonserver(override: Path | None = None) -> Path:
    """Path of the ``tritonserver`` binary: ``override`` (``Settings.triton_bin``), else the wheel's."""
    path = Path(override) if override else _wheel_dir() / "bin" / "tritonserver"
    if not path.is_file():
        raise TritonStartError(f"tritonserver not found at {path}",
                               hint="set RANKSERVE_TRITON_BIN to a tritonserver binary, or leave it unset for "
                                    "the one in the nvidia-pytriton wheel")
    return path


def _prepare_backends(runtime_dir: Path) -> Path:
    """Copy the wheel's backends and install the stub for this interpreter; returns backends dir."""
    src = _wheel_dir()
    dst = runtime_dir / "backends"
    stub_src = src / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    if not stub_src.is_file():
        raise TritonStartError(f"no python backend stub for Python {sys.version_info.major}.{sys.version_info.minor} "
                               f"in {src}", hint="run rankserve on a Python the wheel has a stub for (3.10 to 3.13)")
    stub_dst = dst / "python" / "triton_python_backend_stub"
    if not stub_dst.is_file() or stub_dst.stat().st_size != stub_src.stat().st_size:
        tmp = runtime_dir / ".backends-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src / "backends", tmp)
        shutil.copy2(stub_src, tmp / "python" / "triton_python_backend_stub")
        os.chmod(tmp / "python" / "triton_python_backend_stub", 0o755)
        shutil.rmtree(dst, ignore_errors=True)
        os.rename(tmp, dst)
    return dst


_STUB_REGION = "rankserve-triton-"  # + the pid of the rankserve process that started the Triton, "-"


def stub_region_prefix(pid: int | None = None) -> str:
    """The prefix of the python backend's ``/dev/shm`` regions of Tritons this process starts."""
    return f"{_STUB_REGION}{os.getpid() if pid is None else pid}-"


def sweep_stub_regions(shm_dir: Path = Path("/dev/shm")) -> list[Path]:
    """Remove the python backend's regions of Tritons whose starter is gone (Triton dies with its
    starter: ``setpriv --pdeathsig``); returns what was removed."""
    gone = []
    for path in shm_dir.glob(f"{_STUB_REGION}*"):
        pid = path.name[len(_STUB_REGION):].split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            gone.append(path)
    return gone


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    site = _pytriton_dir().parent
    libs = [p for p in (libdir, str(site / "nvidia_pytriton.libs")) if p]
    env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}:{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


class TritonProcess:
    """A ``tritonserver`` child process on loopback ports, explicit model control.

    Args:
        repo: the model repository.
        runtime_dir: where backends and the log live.
        models: models to load at start (default: every directory with a ``config.pbtxt``).
        grpc_port, http_port, metrics_port: 0 picks free ports.
        ready_timeout_s: how long to wait for readiness.
        binary: the ``tritonserver`` to run (default: the wheel's).
        kind: instance kind of every model (``auto``, ``cpu``, ``gpu``), written into the configs at start.
        torch_threads: torch threads per model instance, written into the configs at start.
        load: loads ``models`` into the started server (its client holds this Triton's key),
            after every start, restarts included: what the repository layer checked
            (``serving.repository.loading``). None: Triton loads ``models`` itself, every version
            on disk (``--load-model``).
    """

    def __init__(self, repo: Path, *, runtime_dir: Path, models: list[str] | None = None, grpc_port: int = 0,
                 http_port: int = 0, metrics_port: int = 0, ready_timeout_s: float = 180.0,
                 binary: Path | None = None, kind: str = "auto", torch_threads: int = 1,
                 load: Callable[[TritonClient], object] | None = None) -> None:
        self.repo = Path(repo).resolve()
        self.runtime_dir = Path(runtime_dir).resolve()
        self.models = models if models is not None else sorted(
            p.name for p in self.repo.iterdir() if (p / "config.pbtxt").is_file())
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self.binary = binary
        self.kind = kind
        self.torch_threads = torch_threads
        self.load = load
        self.log_path = self.runtime_dir / f"triton-{self.grpc_port}.log"
        # the restricted-protocol key of this Triton (model loads, shared memory): the same across
        # the supervisor's restarts, so clients holding it keep working
        self.key = secrets.token_urlsafe(24)
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit = False

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def error_tail(self, n: int = 10) -> str:
        """Up to ``n`` lines of the log from its last error line (Triton's ``E1130 ...`` or
        ``error: ...``) on, else its last ``n`` lines."""
        lines = self.log_tail(400).splitlines()
        errors = [i for i, ln in enumerate(lines) if _ERROR_LINE.match(ln)]
        return "\n".join(lines[errors[-1]:errors[-1] + n] if errors else lines[-n:])

    def start(self) -> TritonProcess:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        backends = _prepare_backends(self.runtime_dir)
        binary = find_tritonserver(self.binary)
        rewritten = apply_instance_settings(self.repo, self.models, kind=self.kind, torch_threads=self.torch_threads)
        if rewritten:
            log.info("config.pbtxt instance settings (kind %s, %d torch threads) written for %s",
                     self.kind, self.torch_threads, rewritten)
        refreshed = refresh_runners(self.repo, self.models)
        if refreshed:
            log.info("model.py runner of this rankserve written into %s", refreshed)
        swept = sweep_stub_regions()
        if swept:
            log.info("removed %d shared-memory region(s) of Tritons that are gone", len(swept))
        restricted = f"model-repository,shared-memory:{KEY_HEADER}={self.key}"
        cmd = [
            str(binary),
            f"--model-repository={self.repo}",
            "--model-control-mode=explicit",
            *([] if self.load is not None else [f"--load-model={m}" for m in self.models]),
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-cpu-metrics=false", "--allow-gpu-metrics=false",
            # loading models and mapping memory need this Triton's key: another process that
            # reaches its ports (another container of the pod, say) can only infer
            f"--grpc-restricted-protocol={restricted}", f"--http-restricted-api={restricted}",
            # the python backend's regions named after this process, so that those of a Triton
            # that was killed are found and removed at the next start
            f"--backend-config=python,shm-region-prefix-name={stub_region_prefix()}",
            "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
            # config.pbtxt files are written complete (serving.triton.config); auto-completion would
            # start one more python stub per model load (start + load of both models: 5.5 -> 3.1 s)
            "--disable-auto-complete-config",
        ]
        setpriv = shutil.which("setpriv")
        if setpriv:
            # SIGTERM to Triton when the thread that started it dies, even by SIGKILL: no orphaned
            # server keeps its ports and memory after a killed `rankserve serve` or test session
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        log.info("starting Triton: %s", " ".join(cmd))
        if self.log_path.exists():  # a restart keeps the previous run's log beside the new one
            self.log_path.replace(self.log_path.with_suffix(".log.1"))
        with open(self.log_path, "wb") as logf:
            self._proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=_child_env(),
                                          start_new_session=True)
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll readiness (after ``load``, once the server answers); fail fast with Triton's log if
        the process exits. An error of ``load`` stops the server and is raised as it is."""
        from serving.triton.client import TritonClient

        t_end = time.monotonic() + self.ready_timeout_s
        client = TritonClient(self.grpc_url, self.key)
        loaded = self.load is None
        try:
            while time.monotonic() < t_end:
                if not loaded and self._answers(client):
                    loaded = True
                    try:
                        self.load(client)  # type: ignore[misc]
                    except IntegrityError:  # refused before Triton saw it: the error names the file
                        self.stop()
                        raise
                    except RankserveError as err:  # Triton could not load it: its log says why
                        error = self._start_error(f"a model did not load ({err.message.splitlines()[0][:200]})")
                        self.stop()
                        raise error from err
                    except BaseException:
                        self.stop()
                        raise
                if self._proc is None or self._proc.poll() is not None:
                    code = None if self._proc is None else self._proc.returncode
                    raise self._start_error(f"tritonserver exited with {code}")
                fatal = self._fatal_log_line()
                if fatal:
                    self.stop()
                    raise self._start_error(f"tritonserver cannot become ready ({fatal})")
                try:
                    if client.server_ready() and all(client.model_ready(m) for m in self.models):
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        self.stop()
        raise self._start_error(f"tritonserver not ready after {self.ready_timeout_s:g} s")

    @staticmethod
    def _answers(client: TritonClient) -> bool:
        try:
            return client.server_live()
        except Exception:  # noqa: BLE001 - not listening yet
            return False

    def _start_error(self, what: str) -> TritonStartError:
        """``what`` happened; the error carries the tail of Triton's log and where the rest is."""
        return TritonStartError(
            f"Triton did not start: {what}", details=self.error_tail(),
            hint=f"Triton's whole log: {self.log_path}. A model that does not load: rankserve build --force "
                 "rebuilds the demo models; RANKSERVE_TRITON_URL=host:port uses a running Triton instead.")

    def _fatal_log_line(self) -> str | None:
        """A log line after which Triton never becomes ready although it keeps running.

        A python stub that cannot load its libraries (``libcudart``, ``libpython``) dies at exec;
        Triton then waits in "loading" forever, even with ``--exit-on-error``.
        """
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return None
        return next((ln.strip() for ln in text.splitlines() if _FATAL_LOG_TEXT in ln), None)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (graceful, ~4 s), then SIGKILL for the whole process group."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
        log.info("Triton stopped")

    def __enter__(self) -> TritonProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
