"""The model repository is code: what each version's files were when they were written, and the check before a load.

Owns: ``digests.json`` in each version folder (the sha256 of every file of the version, written
when the version is written: by a push, the build, training), :func:`verify_version` and
:func:`verify_repository`, and the rule that a version's ``model.py`` is one of rankserve's own
runners. Must not touch: traffic, Triton (the callers load what passed), state that changes all
the time (traffic files, heartbeats, the catalogue, scenarios: not versions, not covered).

Triton's python backend runs whatever ``model.py`` it finds in a version folder: so a version
passes only when every file it holds is one recorded at writing time, with the same digest,
nothing is missing, nothing was added, and its ``model.py`` is byte for byte a runner this
rankserve ships. A version written before digests existed has no ``digests.json``: it is
unverified and does not pass until it is written again (rebuild or re-push).

The python backend's stub writes ``__pycache__/`` beside ``model.py`` when it imports it (it
ignores ``PYTHONDONTWRITEBYTECODE``), and Python would run a cached file in place of the source
when its stamp matches. So ``__pycache__`` is not part of a version: the check passes over it and
:func:`clear_bytecode` removes it right before every load, so what runs is compiled from the
checked ``model.py``. The check finds tampering at rest and damage; against a writer racing the
load, mount the versions read-only (the cluster manifest does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.files import atomic_write_bytes, atomic_write_text, file_sha256, fsync_dir, version_dirs
from serving.triton.config import RUNNER

__all__ = ["DIGESTS_FILE", "Finding", "clear_bytecode", "record_digests", "record_runner", "refresh_runners", "runner_digests", "verify_repository",
           "verify_version"]

DIGESTS_FILE = "digests.json"
_BYTECODE = "__pycache__"
# Every runner rankserve has shipped says this in its docstring (its first line changed with ONNX).
_RUNNER_MARK = b"Owns: one model version inside Triton. Must not touch: rankserve (it is copied into each version)."


def clear_bytecode(version_dir: Path) -> None:
    """Remove what Python cached of a version's code, so that the next load compiles ``model.py``."""
    import shutil

    for cache in Path(version_dir).rglob(_BYTECODE):
        if cache.is_dir() and not cache.is_symlink():
            shutil.rmtree(cache, ignore_errors=True)
        else:
            cache.unlink(missing_ok=True)


def runner_digests() -> frozenset[str]:
    """The sha256 of each ``model.py`` runner this rankserve ships (a version's must be one)."""
    return frozenset({file_sha256(RUNNER)})


def _files(version_dir: Path) -> list[str]:
    """Every file below ``version_dir`` (relative, '/'-separated), the digests file aside."""
    out = []
    for root, dirs, names in os.walk(version_dir):
        dirs[:] = sorted(d for d in dirs if d != _BYTECODE)
        for name in sorted(names):
            rel = (Path(root) / name).relative_to(version_dir).as_posix()
            if rel != DIGESTS_FILE:
                out.append(rel)
    return out


def record_digests(version_dir: Path) -> dict[str, str]:
    """Write ``digests.json`` for the files of ``version_dir`` as they are now, each file fsynced
    first (the version is about to be renamed into place). Returns the digests."""
    digests = {}
    for rel in _files(version_dir):
        path = version_dir / rel
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        digests[rel] = file_sha256(path)
    atomic_write_text(version_dir / DIGESTS_FILE, json.dumps({"algorithm": "sha256", "files": digests},
                                                               indent=1, sort_keys=True) + "\n")
    fsync_dir(version_dir)
    return digests


@dataclass(frozen=True)
class Finding:
    """One reason a version does not pass: the file (relative to the version folder) and what is wrong."""

    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


def verify_version(version_dir: Path) -> list[Finding]:
    """What is wrong with ``version_dir`` (empty: it passes; see the module docstring)."""
    try:
        recorded = json.loads((version_dir / DIGESTS_FILE).read_text())["files"]
        if not isinstance(recorded, dict):
            raise TypeError("files is not an object")
    except FileNotFoundError:
        return [Finding(DIGESTS_FILE, "missing: unverified (written before digests were recorded); rebuild or "
                                      "push it again")]
    except (ValueError, KeyError, TypeError) as err:
        return [Finding(DIGESTS_FILE, f"damaged ({err})")]
    found: list[Finding] = []
    present = set(_files(version_dir))
    for rel in sorted(set(recorded) | present):
        if rel not in present:
            found.append(Finding(rel, "missing"))
        elif rel not in recorded:
            found.append(Finding(rel, "not recorded when the version was written"))
        elif file_sha256(version_dir / rel) != recorded[rel]:
            found.append(Finding(rel, "differs from what was written (sha256 mismatch)"))
    if "model.py" in present and file_sha256(version_dir / "model.py") not in runner_digests():
        found.append(Finding("model.py", "is not a runner this rankserve ships"))
    return found


def verify_repository(repo: Path, models: list[str] | None = None) -> dict[str, list[Finding]]:
    """``model/version`` -> findings, for every version folder of ``models`` (default: every model)."""
    repo = Path(repo)
    names = models if models is not None else sorted(
        p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file()) if repo.is_dir() else []
    return {f"{name}/{v}": verify_version(path) for name in names
            for v, path in sorted(version_dirs(repo / name).items())}


def record_runner(version_dir: Path) -> None:
    """Record the digest of ``version_dir``'s ``model.py`` after rankserve replaced it with its own
    runner; the other files keep the digests they were written with (a version that had none
    stays unverified)."""
    path = version_dir / DIGESTS_FILE
    try:
        body = json.loads(path.read_text())
        body["files"]["model.py"] = file_sha256(version_dir / "model.py")
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return
    atomic_write_text(path, json.dumps(body, indent=1, sort_keys=True) + "\n")


def refresh_runners(repo: Path, models: Sequence[str]) -> list[str]:
    """Make every version's copy of rankserve's runner (``RUNNER``: a ``model.py`` whose docstring
    says what every runner rankserve has shipped says) this rankserve's, replacing (atomically) the copies that differ; any other
    ``model.py`` is the model's own and stays. The runner belongs to the server, not to the
    version: a repository built by an earlier rankserve keeps its copies, and one of those read a
    request's inputs with ``as_numpy()``, which served wrong scores under NumPy 2.

    Returns:
        ``model/version`` of each copy replaced.
    """
    runner = RUNNER.read_bytes()
    replaced = []
    for name in models:
        for path in sorted((Path(repo) / name).glob("*/model.py")):
            text = path.read_bytes()
            if path.parent.name.isdigit() and text != runner and _RUNNER_MARK in text[:2048]:
                atomic_write_bytes(path, runner)
                record_runner(path.parent)  # the version's other files keep their recorded digests
                replaced.append(f"{name}/{path.parent.name}")
    return replaced
