"""Files that several layers write or list: one way to do each.

Owns: durable, atomic replacement of a small file (traffic files, ``config.pbtxt``, scenario and
key files): written to a temporary file, fsynced, renamed over the old one, and the folder
fsynced, so that after a crash the file is the old one or the new one, never empty; the sweep of
temporary files a crash left; private folders (mode 0700, owned by this user, not a link); and
the listing of a model's numbered version directories. Must not touch: anything of rankserve
(bottom layer).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["TEMP_MARK", "atomic_write_bytes", "file_sha256", "last_good", "pid_alive", "read_state", "report_damage", "write_state", "atomic_write_text", "fsync_dir", "private_dir", "sweep_temporary",
           "version_dirs"]

TEMP_MARK = ".tmp-"  # temporary files are named ".<name>.tmp-<random>" beside the file they become


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` in one rename: readers see the old file or the new one.
    ``durable``: so does a reader after a crash (file and folder fsynced); off only for files
    rewritten every second whose loss costs nothing (heartbeats)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def file_sha256(path: Path) -> str:
    """The sha256 of the file ``path`` (hex), read in chunks of 1 MiB."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644, durable: bool = True) -> None:
    """:func:`atomic_write_bytes` of ``text`` (UTF-8)."""
    atomic_write_bytes(path, text.encode(), mode=mode, durable=durable)


def sweep_temporary(folder: Path, *, older_than_s: float = 60.0) -> list[Path]:
    """Remove the temporary files a crashed writer left in ``folder`` (and below); returns them.
    Only those older than ``older_than_s``: a writer of another process may be using a new one."""
    import time

    if not folder.is_dir():
        return []
    cutoff = time.time() - older_than_s
    swept = []
    for p in folder.rglob(f".*{TEMP_MARK}*"):
        try:
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                swept.append(p)
        except OSError:  # gone meanwhile, or a read-only mount: not ours to clean
            continue
    return swept


def private_dir(path: Path) -> Path:
    """``path`` as a folder only this user may use: made with mode 0700, or, when it exists,
    checked to be a real folder (not a link) owned by this user, and made 0700.

    Raises:
        PermissionError: it exists as a link, or belongs to another user.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path)
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"{path} exists but is not a folder of this user (uid {os.getuid()}): remove it")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numbered version directories of one model (temp dirs starting with '.' are ignored)."""
    if not model_dir.is_dir():
        return {}
    return {int(p.name): p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` (the writer named in a file or a shared-memory region's name) runs.
    Another user's process counts as alive: not ours to clean up after."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


T = TypeVar("T")
_GOOD = ".good"  # beside a state file: its last copy known to read back (``.<name>.good``)


def last_good(path: Path) -> Path:
    """Where :func:`write_state` keeps the copy of ``path`` that :func:`read_state` falls back on."""
    hidden = path.name if path.name.startswith(".") else f".{path.name}"
    return path.with_name(f"{hidden}{_GOOD}")


def write_state(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Replace the state file ``path`` (a traffic split, a scenario pointer, the keys) durably, and
    keep the same text as its last good copy: a file damaged later (a disk that filled up under
    another writer, a hand edit) never leaves a reader without a state to fall back on."""
    atomic_write_text(path, text, mode=mode)
    atomic_write_text(last_good(path), text, mode=mode)


_damage_seen: set[str] = set()


def report_damage(line: str) -> None:
    """One warning per damaged state file and reason (replicas read state files every poll)."""
    import json
    import logging

    if line not in _damage_seen:
        _damage_seen.add(line)
        logging.getLogger("rankserve").warning(json.dumps({"event": "state_file_damaged", "reason": line}))


def read_state(path: Path, parse: Callable[[str], T], *,
               on_damage: Callable[[str], None] = report_damage) -> T | None:
    """``parse`` of the state file ``path`` (None when there is none). A file that does not parse
    (empty, truncated, not what it should hold) is refused: ``on_damage`` gets one line saying
    so (default: a warning, once), and its last good copy is read instead.

    Raises:
        ValueError: neither the file nor its last good copy parses.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return parse(text)
    except (ValueError, KeyError, TypeError) as err:
        good = last_good(path)
        if not good.is_file():
            raise ValueError(f"{path} is damaged ({err}) and has no last good copy") from err
        on_damage(f"{path} is damaged ({err or 'empty'}); using its last good copy")
        try:
            return parse(good.read_text())
        except (ValueError, KeyError, TypeError) as again:
            raise ValueError(f"{path} and its last good copy are damaged ({again})") from again
