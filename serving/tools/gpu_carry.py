"""The wheels the GPU check carries to the bare device image, and the one device call that runs it.

Owns: which wheels travel (``CARRY``), downloading them for the device's Python and platform,
slimming the ``nvidia-pytriton`` wheel to the device's Python, checking what travels against the
64 MiB limit, and the device call's command line. Must not touch: the repository's tracked files;
it writes only the ignored wheel folder (``.whl/``) and a download cache.

What the bare device image lacks: pydantic (settings and request
schemas), tritonclient and its JSON parser, the ``tritonserver`` binary (nvidia-pytriton). grpcio
and protobuf travel too, since tritonclient 2.73's generated code refuses grpcio < 1.81.1 and its
protobuf gencode is 6.x, and the image's versions of both are not on record. The versions are the
ones installed here, where the tests run. ``nvidia-pytriton`` (55 MB) is slimmed to the device's
Python: the python-backend stubs for other Pythons and the libpython 3.13 only the 3.13 stub links
are left out (about 16 MB); everything else, ``RECORD`` included, is the wheel's own.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["CARRY", "DEVICE_PYTHON", "LIMIT_BYTES", "device_command", "prepare", "slim_pytriton", "travelling_bytes"]

DEVICE_PYTHON = "3.12"
LIMIT_BYTES = 64 * 2**20
CARRY = ("nvidia-pytriton", "tritonclient", "python-rapidjson", "grpcio", "protobuf", "pydantic", "pydantic-core",
         "typing-inspection", "annotated-types", "typing-extensions")
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
# Seconds: the check's own budget, the device call's limit (pip install, Triton's stop and the
# report fit in the difference), and what a device machine takes to start.
CHECK_BUDGET_S = 270
CALL_TIMEOUT_S = 360
_STUBS = re.compile(r"^pytriton/tritonserver/python_backend_stubs/(?P<py>\d+\.\d+)/")
_LIBPYTHON = re.compile(r"^nvidia_pytriton\.libs/libpython3-[0-9a-f]+\.(?P<minor>\d+)\.so")


def pins() -> list[str]:
    """``name==version`` of each carried distribution, as installed in this environment."""
    out = []
    for name in CARRY:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError as err:
            raise SystemExit(f"gpu-check prepare: {name} is not installed here; run it with the venv's python") from err
    return out


def download(cache: Path, requirements: list[str]) -> list[Path]:
    """``pip download`` exactly ``requirements`` (no dependencies) for CPython 3.12 on manylinux x86_64."""
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", DEVICE_PYTHON, "--implementation", "cp", "-d", str(cache)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + requirements, check=True)
    wheels = []
    for req in requirements:
        name, version = req.split("==")
        stem = re.sub(r"[-_.]+", "_", name).lower()
        found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
        if len(found) != 1:
            raise SystemExit(f"gpu-check prepare: expected one wheel of {req} in {cache}, found {found}")
        wheels.append(found[0])
    return wheels


def slim_pytriton(src: Path, dst: Path, python: str = DEVICE_PYTHON) -> list[str]:
    """Copy the ``nvidia-pytriton`` wheel without the stubs of other Pythons and the bundled
    libpython of another minor version; ``RECORD`` loses their lines. Returns what was left out."""
    minor = python.split(".")[1]
    dropped: list[str] = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            stub, lib = _STUBS.match(info.filename), _LIBPYTHON.match(info.filename)
            if (stub and stub.group("py") != python) or (lib and lib.group("minor") != minor):
                dropped.append(info.filename)
        for info in zin.infolist():
            if info.filename in dropped:
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                gone = set(dropped)
                data = "".join(ln for ln in data.decode().splitlines(keepends=True)
                               if ln.split(",", 1)[0] not in gone).encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)  # keeps modes (executables)
    return dropped


def travelling_bytes(root: Path) -> int:
    """Bytes of what a device call sends besides the carried paths: tracked and untracked files
    that git does not ignore, and ``shared/`` where the checkout has one."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode()
    files = {root / f for f in out.split("\0") if f}
    if (root / "shared").is_dir():
        files |= {p for p in (root / "shared").rglob("*") if p.is_file()}
    return sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())


def device_command(budget_s: float = CHECK_BUDGET_S, dest: str = ".whl") -> str:
    """The device call's command: install the carried wheels into /tmp/site, then the check,
    its report written under ``$OUT``."""
    return (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
            f"{dest}/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONUNBUFFERED=1; "
            f"python3 -m serving.tools.gpu_check --out \"$OUT\" --budget-s {budget_s:.0f}")


def _ignored(root: Path, dest: Path) -> bool:
    probe = dest.relative_to(root) / "probe.whl"
    return subprocess.run(["git", "-C", str(root), "check-ignore", "-q", str(probe)], check=False).returncode == 0


def prepare(root: Path, dest: Path, *, budget_s: float = CHECK_BUDGET_S, cache: Path | None = None) -> int:
    """Fill ``dest`` with the carried wheels, check the size of what travels, print the device call."""
    if not _ignored(root, dest):
        print(f"gpu-check prepare: {dest} is not ignored by git; add /{dest.name}/ to .gitignore first", file=sys.stderr)
        return 1
    cache = cache or Path(tempfile.gettempdir()) / "rankserve-gpu-wheels"
    wheels = download(cache, pins())
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for whl in wheels:
        if whl.name.startswith("nvidia_pytriton-"):
            dropped = slim_pytriton(whl, dest / whl.name)
            print(f"nvidia-pytriton slimmed to Python {DEVICE_PYTHON}: {len(dropped)} files left out "
                  f"({(whl.stat().st_size - (dest / whl.name).stat().st_size) / 2**20:.1f} MiB)")
        else:
            shutil.copy2(whl, dest / whl.name)
    carried = sum(p.stat().st_size for p in dest.iterdir())
    tree = travelling_bytes(root)
    total = carried + tree
    for p in sorted(dest.iterdir()):
        print(f"  {p.stat().st_size / 2**20:6.2f} MiB  {p.name}")
    print(f"carry: wheels {carried / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {total / 2**20:.1f} MiB "
          f"(limit {LIMIT_BYTES / 2**20:.0f} MiB), measured in {root}")
    if total > LIMIT_BYTES:
        print("gpu-check prepare: over the device call's limit; nothing to run", file=sys.stderr)
        return 1
    command = device_command(budget_s, dest.name)
    call = {"command": command, "carry": [dest.name], "timeout_s": CALL_TIMEOUT_S}
    print("device call (the `run` tool; the device sends the checkout the session started in, so run "
          "`prepare` there):")
    print(json.dumps(call, indent=2))
    print(f"command: {len(command)} characters (limit 2000). Expected: about {(budget_s + 30) / 60:.1f} min (pip "
          f"install about 30 s, then the check's own budget of {budget_s:.0f} s), plus 1-2 min for the machine's "
          f"start. With the {CALL_TIMEOUT_S} s limit, a start and two runs fit in the 15 min of device time: rerun "
          "at once if needed, else give the machine back. Afterwards copy gpu-check.log, .json and .md from the "
          "returned files into docs/gpu/ and commit them.")
    return 0
