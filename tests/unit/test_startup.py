"""Start-up checks and the summary screen, on their own (no servers): supported Pythons agree
with pyproject and the Makefile, taken ports are named with their setting, Ray's bind failures
are recognised, and the summary says what serves where."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serving.config import Settings
from serving.errors import PortInUseError, UnsupportedPythonError
from serving.net import free_port, port_holder
from serving.ray_runtime import Ingress, _port_error
from serving.startup import SUPPORTED_PYTHON, check_ports, check_python, example_curl, summary_lines

ROOT = Path(__file__).resolve().parents[2]


def test_supported_pythons_agree_with_pyproject_and_the_makefile() -> None:
    (lo, hi) = SUPPORTED_PYTHON
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'requires-python = ">={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}"' in pyproject
    makefile = (ROOT / "Makefile").read_text()
    assert f"({lo[0]}, {lo[1]}) <= sys.version_info[:2] < ({hi[0]}, {hi[1]})" in makefile


@pytest.mark.parametrize("version", [(3, 9, 18), (3, 14, 0), (2, 7, 18)])
def test_an_unsupported_python_is_refused_with_what_to_do(version: tuple[int, int, int]) -> None:
    with pytest.raises(UnsupportedPythonError) as info:
        check_python(version)
    assert "3.10 to 3.13" in info.value.message and ".".join(map(str, version)) in info.value.message
    assert "PYTHON=python3.13" in (info.value.hint or "")
    check_python()  # the running one is supported


@pytest.mark.parametrize(("field", "setting"), [("port", "RANKSERVE_PORT"), ("grpc_port", "RANKSERVE_GRPC_PORT")])
def test_a_taken_port_is_named_with_its_setting(field: str, setting: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        other = free_port()
        ports = {"port": other, "grpc_port": other} | {field: port}
        with pytest.raises(PortInUseError) as info:
            check_ports(Settings.from_env({}, **ports))
        assert str(port_holder(port)).startswith(f"pid {os.getpid()} (")  # this process holds it
    err = info.value
    assert f"127.0.0.1:{port} is in use by pid" in err.message and err.exit_status == 2
    assert re.search(rf"{setting}=\d+ make serve", err.hint or ""), err.hint
    check_ports(Settings.from_env({}, port=port, grpc_port=0))  # free again


# Ray 2.60's own words when the ingress cannot bind, seen here (HAProxy's, then Serve's proxy's)
_HAPROXY = ("RayTaskError(RuntimeError)(RuntimeError(\"HAProxy crashed during startup: [NOTICE]   (21598) : haproxy "
            "version is 2.8.25-5cf5d0683\\n[ALERT]    (21598) : Binding [/tmp/rankserve-haproxy-28123/7cb4/haproxy.cfg:"
            "50] for frontend http_frontend: cannot bind socket (Address already in use) for [127.0.0.1:28123]\\n\"))")
_PROXY = "RuntimeError: Failed to bind to address '127.0.0.1:9000'."


def test_ray_s_bind_failures_become_a_port_in_use_error_naming_the_setting() -> None:
    ingress = Ingress(port=28123, grpc_port=9000)
    http, grpc = _port_error(RuntimeError(_HAPROXY), ingress), _port_error(RuntimeError(_PROXY), ingress)
    assert http is not None and "RANKSERVE_PORT" in (http.hint or "") and "28123" in http.message
    assert grpc is not None and "RANKSERVE_GRPC_PORT" in (grpc.hint or "")
    assert _port_error(RuntimeError("something else"), ingress) is None


def test_the_summary_says_what_serves_where(tmp_path: Path) -> None:
    settings = Settings.from_env({}, port=8123, grpc_port=9123, model_repository=tmp_path)
    build = {"seed": 0, "ctr": 0.0312, "config": {"n_items": 50000, "n_users": 20000}, "versions": {"user_tower": 1, "ranker": 1},
             "quality": {"auc": 0.8536, "oracle_auc": 0.869, "recall_at_500": 0.9927}}
    served = {"models": [{"name": "ranker", "traffic": {"live": 2, "canary": {"version": 3, "percent": 10.0}},
                          "versions": [{"version": 2, "quality": {"auc": 0.861, "oracle_auc": 0.869}}]},
                         {"name": "user_tower", "traffic": {"live": 1}, "versions": []}],
              "cross_backend": "numba_cpu", "faiss": {"kind": "ivf", "on_gpu": False},
              "scenarios": {"default": "home", "refused": {"cart": "limits.max_k: 900 is above the server's global limit"},
                            "scenarios": [{"name": "home", "version": 1, "needs": []},
                                          {"name": "similar", "version": 2, "needs": ["item_id"]}]}}
    rows = dict(summary_lines(settings, build, served, triton_url="127.0.0.1:8001", log_path=tmp_path / "x.log"))
    assert rows["models"] == ("data seed 0: 50,000 items, 20,000 users, click rate 3.1% · ranker v2, canary v3 10% · user_tower v1 · "
                              "AUC 0.861 (oracle 0.869) · recall@500 0.993")
    assert rows["backends"].startswith("crossing numba_cpu · FAISS CPU (ivf) · Triton embedded")
    assert rows["scenarios"] == "home v1 (default) · similar v2 (needs item_id) · refused: cart"
    assert rows["HTTP"].startswith("http://127.0.0.1:8123/v1/rank")
    assert rows["gRPC"].startswith("127.0.0.1:9123")
    assert rows["metrics"].startswith("http://127.0.0.1:8123/metrics")
    assert rows["logs"].startswith(str(tmp_path / "x.log"))
    off = dict(summary_lines(settings.model_copy(update={"grpc_port": 0}), build, {}, triton_url="", log_path=None))
    assert off["gRPC"].startswith("off") and "did not answer" in off["backends"]
    assert "did not answer /v1/scenarios" in off["scenarios"]


def test_the_summary_of_an_imported_data_set_says_its_version_rows_and_click_rate(tmp_path: Path) -> None:
    settings = Settings.from_env({}, port=8123, model_repository=tmp_path)
    build = {"data_set": "shop", "version": 3, "built_at": "2026-12-03T21:14:59+0000", "ctr": 0.6344,
             "impressions": 40000, "config": {"n_items": 3000, "n_users": 800}}
    rows = dict(summary_lines(settings, build, {}, triton_url="", log_path=None))
    assert rows["models"].startswith("data set shop v3: 3,000 items, 800 users, 40,000 impressions, click rate 63.4%, "
                                     "imported 2026-12-03")
    unread = dict(summary_lines(settings, {**build, "ctr": None}, {}, triton_url="", log_path=None))
    assert "click rate ?" in unread["models"]


def test_the_request_to_try_names_one_of_the_data_set_s_users_quoted_for_the_shell(tmp_path: Path) -> None:
    settings = Settings.from_env({}, port=8123, model_repository=tmp_path)
    assert "'{\"user_id\": 42, \"k\": 5}'" in example_curl(settings)
    assert "'{\"user_id\": 100007, \"k\": 5}'" in example_curl(settings, 100007)
    curl = example_curl(settings, "o'neil-é")
    assert curl.endswith("""-d '{"user_id": "o'\\''neil-é", "k": 5}'""")
    assert shlex.split(curl)[-1] == '{"user_id": "o\'neil-é", "k": 5}'


def test_the_cli_imports_nothing_an_old_python_cannot() -> None:
    """main() refuses an unsupported Python only if it gets to run: its module may import only the
    standard library, serving.errors and serving.startup (whose own top imports are as plain)."""
    for module in ("cli", "startup"):
        tops = re.findall(r"^(?:from|import) ([\w.]+)", (ROOT / "serving" / f"{module}.py").read_text(), re.M)
        ours = {t for t in tops if t.split(".")[0] == "serving"}
        assert ours <= {"serving.errors", "serving.startup", "serving.stopping"}, (module, ours)
        assert all(t.split(".")[0] in sys.stdlib_module_names | {"serving", "__future__"} for t in tops), tops


def _cli(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_a_bug_is_one_line_on_the_terminal_and_its_traceback_in_the_log(tmp_path: Path) -> None:
    """A failure rankserve did not foresee (here a command that raises) still ends in one line, which
    names the log file holding its traceback."""
    code = ("import sys, serving.cli as cli\n"
            "def cmd_build(settings, args):\n    raise RuntimeError('an unforeseen failure')\n"
            "cli.cmd_build = cmd_build\nsys.exit(cli.main(['build']))\n")
    proc = _cli(code, {"RANKSERVE_DATA_DIR": str(tmp_path)})
    first, second = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and proc.stdout == ""
    assert first == "rankserve build: unexpected error: RuntimeError: an unforeseen failure"
    log = Path(second.split("its traceback is in ")[1].split(";")[0])
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text() and "an unforeseen failure" in \
        log.read_text()


def test_a_data_dir_that_cannot_hold_the_log_is_a_set_up_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    proc = _cli("import sys, serving.cli as cli; sys.exit(cli.main(['build']))",
                {"RANKSERVE_DATA_DIR": str(tmp_path / "file")})
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr
    first, hint = proc.stderr.strip().splitlines()
    assert first.startswith(f"rankserve build: cannot write the log under {tmp_path / 'file' / 'logs'}")
    assert hint == "  set RANKSERVE_DATA_DIR to a directory this user may write"


def test_a_ray_address_that_nothing_answers_on_is_a_set_up_error_before_anything_starts() -> None:
    from serving.errors import ConfigError, SetupError
    from serving.startup import check_ray_address

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        up = listening.getsockname()[1]
        check_ray_address(Settings.from_env({}, ray_address=f"127.0.0.1:{up}"))
        check_ray_address(Settings.from_env({}, ray_address=f"ray://127.0.0.1:{up}"))
    check_ray_address(Settings.from_env({}, ray_address="local"))  # Ray's own to resolve
    closed = free_port()
    for address in (f"127.0.0.1:{closed}", f"ray://127.0.0.1:{closed}"):
        with pytest.raises(SetupError, match=re.escape(f"no Ray cluster answers at {address} (connection refused)")) as err:
            check_ray_address(Settings.from_env({}, ray_address=address))
        assert "RANKSERVE_RAY_ADDRESS=local" in (err.value.hint or "")
    with pytest.raises(ConfigError, match="is not a Ray address"):
        check_ray_address(Settings.from_env({}, ray_address="head:port"))
