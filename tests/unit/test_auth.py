"""API keys: made once and shown once, stored as hashes, roles checked, revoked within a second,
a damaged file never opens the door or stops a replica."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from serving.auth import Access, KeyRing, add_key, list_keys, revoke_key
from serving.errors import ConfigError, PermissionDeniedError, UnauthenticatedError
from serving.files import last_good


def test_a_key_is_long_random_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    path = tmp_path / ".keys.json"
    key = add_key(path, "feed", "rank")
    other = add_key(path, "ops", "admin")
    assert len(key) >= 32 and key != other
    text = path.read_text()
    assert key not in text and other not in text
    assert {(e.name, e.role) for e in list_keys(path)} == {("feed", "rank"), ("ops", "admin")}
    assert path.stat().st_mode & 0o777 == 0o600


def test_roles_decide_what_a_key_may_call(tmp_path: Path) -> None:
    path = tmp_path / ".keys.json"
    rank, admin = add_key(path, "feed", "rank"), add_key(path, "ops", "admin")
    ring = KeyRing.read(path)
    assert ring.authorize(rank, "rank").name == "feed"
    assert ring.authorize(admin, "rank").name == "ops" and ring.authorize(admin, "admin").name == "ops"
    with pytest.raises(PermissionDeniedError) as denied:
        ring.authorize(rank, "admin")
    assert denied.value.http_status == 403 and denied.value.grpc_code == "PERMISSION_DENIED"
    for bad in (None, "", rank[:-1], rank + "x", "rsk_" + "A" * 43):
        with pytest.raises(UnauthenticatedError) as info:
            ring.authorize(bad, "rank")
        assert info.value.http_status == 401 and info.value.grpc_code == "UNAUTHENTICATED"


def test_names_are_unique_roles_are_known_and_revoking_an_unknown_name_says_so(tmp_path: Path) -> None:
    path = tmp_path / ".keys.json"
    add_key(path, "feed", "rank")
    with pytest.raises(ConfigError, match="exists"):
        add_key(path, "feed", "admin")
    with pytest.raises(ConfigError, match="role"):
        add_key(path, "x", "root")
    with pytest.raises(ConfigError, match="name"):
        add_key(path, "../etc", "rank")
    with pytest.raises(ConfigError, match="no key named"):
        revoke_key(path, "nobody")


def test_access_follows_adds_and_revokes_within_a_second(tmp_path: Path) -> None:
    path = tmp_path / ".keys.json"
    access = Access("keys", path)
    key = add_key(path, "feed", "rank")
    deadline = time.monotonic() + 30  # a hang bound; the recheck interval is 0.5 s
    while True:
        try:
            access.check(f"Bearer {key}", "rank")
            break
        except UnauthenticatedError:
            assert time.monotonic() < deadline, "an added key was never accepted"
            time.sleep(0.05)
    revoke_key(path, "feed")
    while True:
        try:
            access.check(f"Bearer {key}", "rank")
        except UnauthenticatedError:
            break
        assert time.monotonic() < deadline, "a revoked key was still accepted"
        time.sleep(0.05)


def test_the_header_must_be_a_bearer_and_off_allows_everything(tmp_path: Path) -> None:
    path = tmp_path / ".keys.json"
    key = add_key(path, "feed", "rank")
    access = Access("keys", path)
    assert access.check(f"bearer  {key} ", "rank") is not None
    with pytest.raises(UnauthenticatedError, match="Bearer"):
        access.check(f"Basic {key}", "rank")
    assert Access("off", path).check(None, "admin") is None


def test_a_damaged_keys_file_keeps_the_last_good_keys(tmp_path: Path) -> None:
    path = tmp_path / ".keys.json"
    key = add_key(path, "feed", "rank")
    access = Access("keys", path)
    path.write_text("")  # truncated by a crash of something else
    time.sleep(0.6)
    assert access.check(f"Bearer {key}", "rank").name == "feed"  # type: ignore[union-attr]
    assert KeyRing.read(path).authorize(key, "rank").name == "feed"  # the last good copy, also for a new reader
    json.loads(last_good(path).read_text())
