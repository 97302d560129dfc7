"""API keys: who may call what, kept as hashes in one file beside the model repository.

Owns: the keys file (``<model_repository>/.keys.json``, mode 0600: one entry per named key with
its role and the sha256 of the key, never the key itself), making, listing and revoking keys,
:class:`KeyRing` (one immutable reading of the file) and the access rule: which role a route
needs. Must not touch: HTTP or gRPC (the wire layers hand over the bearer key), Ray, requests.

Roles: ``rank`` may call the ranking API (``/v1/rank`` and the client write paths); ``admin``
may call everything (the operations views and ``/metrics`` too). ``/healthz`` and ``/readyz``
need no key. A key is 32 random bytes (``rsk_`` + 43 URL-safe characters); it is printed once,
by :func:`add_key`'s caller, and only its sha256 is stored: the keys are random, so a fast hash is
enough (no password stretching), and it is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from serving.errors import ConfigError, PermissionDeniedError, UnauthenticatedError
from serving.files import read_state, write_state

__all__ = ["KEYS_FILE", "ROLES", "Access", "KeyEntry", "KeyRing", "Role", "add_key", "keys_path", "list_keys", "revoke_key"]

KEYS_FILE = ".keys.json"
Role = Literal["rank", "admin"]
ROLES: tuple[Role, ...] = ("rank", "admin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PREFIX = "rsk_"
_RECHECK_S = 0.5  # how stale a replica's key ring may get: an added or revoked key counts within a second


def keys_path(model_repository: Path) -> Path:
    """The keys file of the repository at ``model_repository``."""
    return Path(model_repository) / KEYS_FILE


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyEntry:
    """One named key: its role, the sha256 of the key, when it was made."""

    name: str
    role: Role
    sha256: str
    created: float


@dataclass(frozen=True)
class KeyRing:
    """One reading of the keys file. ``stamp`` tells whether the file changed since."""

    entries: tuple[KeyEntry, ...] = ()
    stamp: tuple[int, int, int] | None = None

    @classmethod
    def read(cls, path: Path) -> KeyRing:
        """The keys in ``path`` (none when there is no file).

        Raises:
            ConfigError: the file is damaged (not JSON, wrong fields): the caller keeps its last
                good ring.
        """
        stamp = cls.stamp_of(path)
        try:
            entries = read_state(path, _entries)
        except ValueError as err:
            raise ConfigError(f"keys file {path} is damaged ({err}); fix it or remove it and add the keys again") \
                from err
        return cls(entries or (), stamp)

    @staticmethod
    def stamp_of(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def authorize(self, bearer: str | None, need: Role) -> KeyEntry:
        """The entry of the presented key, if it may do what needs role ``need``.

        Raises:
            UnauthenticatedError: no key, or a key that is not (or no longer) in the file (401).
            PermissionDeniedError: a valid key whose role does not allow this (403).
        """
        if not bearer:
            raise UnauthenticatedError("an API key is required: send 'Authorization: Bearer <key>'")
        digest = _digest(bearer)
        found = None
        for entry in self.entries:  # every entry compared, in constant time each
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        if found is None:
            raise UnauthenticatedError("unknown or revoked API key")
        if need == "admin" and found.role != "admin":
            raise PermissionDeniedError(f"key {found.name!r} has role {found.role!r}; this needs role 'admin'")
        return found


def _entries(text: str) -> tuple[KeyEntry, ...]:
    return tuple(KeyEntry(str(r["name"]), _role(r["role"]), str(r["sha256"]), float(r["created"]))
                 for r in json.loads(text)["keys"])



def _role(value: object) -> Role:
    if value not in ROLES:
        raise ValueError(f"role must be one of {list(ROLES)}, got {value!r}")
    return value  # type: ignore[return-value]


def _write(path: Path, entries: list[KeyEntry]) -> None:
    rows = [{"name": e.name, "role": e.role, "sha256": e.sha256, "created": e.created} for e in entries]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_state(path, json.dumps({"keys": rows}, indent=1) + "\n", mode=0o600)


def _locked_entries(path: Path) -> list[KeyEntry]:
    return list(KeyRing.read(path).entries)


def add_key(path: Path, name: str, role: str) -> str:
    """Make a key named ``name`` with ``role``, store its hash, and return the key (shown once).

    Raises:
        ConfigError: a bad name or role, or a key of that name exists (revoke it first).
    """
    if not _NAME.match(name):
        raise ConfigError(f"key name must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or "
                          f"digit), got {name!r}")
    try:
        checked = _role(role)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    with _FileLock(path):
        entries = _locked_entries(path)
        if any(e.name == name for e in entries):
            raise ConfigError(f"a key named {name!r} exists; revoke it first (rankserve keys revoke {name})")
        key = _PREFIX + secrets.token_urlsafe(32)
        entries.append(KeyEntry(name, checked, _digest(key), time.time()))
        _write(path, entries)
    return key


def revoke_key(path: Path, name: str) -> KeyEntry:
    """Remove the key named ``name``; every replica refuses it within its follow interval.

    Raises:
        ConfigError: no key has that name.
    """
    with _FileLock(path):
        entries = _locked_entries(path)
        gone = [e for e in entries if e.name == name]
        if not gone:
            raise ConfigError(f"no key named {name!r}; rankserve keys list shows them")
        _write(path, [e for e in entries if e.name != name])
    return gone[0]


def list_keys(path: Path) -> list[KeyEntry]:
    """The keys' names, roles and creation times (the hashes stay in the file)."""
    return list(KeyRing.read(path).entries)


class _FileLock:
    """An exclusive lock beside the keys file, so that two ``keys add`` never lose one another's key."""

    def __init__(self, path: Path) -> None:
        self.lock_path = path.with_name(path.name + ".lock")

    def __enter__(self) -> _FileLock:
        import fcntl

        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


class Access:
    """The access rule of one replica: the mode, and the key ring as last read.

    ``mode`` ``off``: every call is allowed. ``keys``: :meth:`check` wants a key of the role. The
    ring is re-read when the file changed (:meth:`refresh`, called by the replica's follower); a
    damaged file leaves the last good ring in place, with one log line.
    """

    def __init__(self, mode: Literal["off", "keys"], path: Path) -> None:
        self.mode = mode
        self.path = path
        self.ring = KeyRing()
        self._refused_stamp: tuple[int, int, int] | None = None
        self._checked_at = time.monotonic()
        if mode == "keys":
            self.refresh()

    def refresh(self) -> bool:
        """Re-read the keys file if it changed; True when the ring was replaced."""
        import logging

        stamp = KeyRing.stamp_of(self.path)
        if stamp == self.ring.stamp or (stamp is not None and stamp == self._refused_stamp):
            return False
        try:
            ring = KeyRing.read(self.path)
        except ConfigError as err:
            self._refused_stamp = stamp
            logging.getLogger("rankserve").warning(json.dumps({"event": "keys_refused", "reason": err.message}))
            return False
        self.ring = ring  # swapped whole: a request sees the old ring or the new one
        return True

    def check(self, authorization: str | None, need: Role) -> KeyEntry | None:
        """Allow or refuse a call that needs role ``need``; ``authorization`` is the header's (or
        gRPC metadata's) value, ``Bearer <key>``.

        Raises:
            UnauthenticatedError: (401) no key, a malformed header, an unknown or revoked key.
            PermissionDeniedError: (403) a key of the wrong role.
        """
        if self.mode == "off":
            return None
        now = time.monotonic()
        if now - self._checked_at >= _RECHECK_S:  # a stat at most every _RECHECK_S
            self._checked_at = now
            self.refresh()
        key = None
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise UnauthenticatedError("the Authorization header must be 'Bearer <key>'")
            key = value.strip()
        return self.ring.authorize(key, need)
