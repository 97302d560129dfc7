"""Catalogue changes on the running server, under load from a separate process, asserted on the
catalogue version each answer carries (not on time): no answer carrying version V holds an item
blocked in V; an added item is recalled; concurrent changes lose nothing; bad change files are
refused whole. Changes go in as an operator makes them, through ``rankserve items``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.pipeline.catalogue import Catalogue
from serving.pipeline.features import ITEM_CAT_FIELDS, ITEM_NUM_FIELDS, FeatureTables
from serving.repository.catalogue import ChangeLog, apply_change
from tests.load import Load
from tests.waiting import wait_for, wait_for_answers

pytestmark = pytest.mark.integration


def _items(settings: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RANKSERVE_MODEL_REPOSITORY": str(settings.model_repository),
           "RANKSERVE_DATA_DIR": str(settings.data_dir)}
    return subprocess.run([sys.executable, "-m", "serving.cli", "items", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _rank(url: str, **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/rank", json={"k": 20, **body}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _wait_version(url: str, version: int) -> None:
    wait_for(lambda: _rank(url, user_id=1)["catalogue_version"] >= version,
             f"an answer carries catalogue version {version}", poll_s=0.05)


def _copy_row(tables: FeatureTables, item: int) -> dict[str, Any]:
    row: dict[str, Any] = {c: int(tables.item_cat[item, j]) for j, c in enumerate(ITEM_CAT_FIELDS)}
    row.update({c: float(tables.item_num[item, j]) for j, c in enumerate(ITEM_NUM_FIELDS)})
    row["dense"] = [float(x) for x in tables.item_dense[item]]
    return row


def _blocked_by_version(log: ChangeLog, base: FeatureTables) -> dict[int, set[int]]:
    cat, out = Catalogue.initial(base), {}
    out[0] = set()
    for change in log.since(0):
        cat = apply_change(cat, change)
        out[cat.version] = set(map(int, cat.blocked.nonzero()[0]))
    return out


def test_catalogue_changes_under_load(settings, rankserve_url: str, tmp_path: Path) -> None:
    base = FeatureTables.load(settings.marketplace_path)
    log = ChangeLog(settings.model_repository)
    users = list(range(40))
    answers = {u: [it["item_id"] for it in _rank(rankserve_url, user_id=u, k=50)["items"]] for u in users}
    counts: dict[int, int] = {}
    for ids in answers.values():
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
    often = sorted(counts, key=lambda i: -counts[i])[:40]  # items the load's answers hold
    given = often[:30] + list(range(1000, 1030))
    bodies = [{"user_id": u, "k": 50, "timeout_ms": 10000} for u in users]
    bodies += [{"user_id": u, "k": 50, "candidates": given, "timeout_ms": 10000} for u in users[:10]]
    with Load(rankserve_url, bodies, tmp_path / "load") as load:
        wait_for_answers(rankserve_url, 30)
        assert _items(settings, "block", *map(str, often[:10])).returncode == 0
        # four operators at once: every change gets its own version, none is lost
        procs = [subprocess.Popen([sys.executable, "-m", "serving.cli", "items", "block", *map(str, often[10 + 5 * k:
                                   15 + 5 * k])], env={**os.environ,
                                   "RANKSERVE_MODEL_REPOSITORY": str(settings.model_repository),
                                   "RANKSERVE_DATA_DIR": str(settings.data_dir)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(4)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-300:] for o in outs]
        assert _items(settings, "unblock", *map(str, often[:5])).returncode == 0
        # a new item: a copy of user 0's best item, which is then blocked; the copy takes its place
        best = answers[0][0]
        new_file = tmp_path / "new.json"
        new_file.write_text(json.dumps([_copy_row(base, best)]))
        added = _items(settings, "add", str(new_file))
        assert added.returncode == 0, added.stderr[-500:]
        (new_id,) = json.loads(added.stdout.strip().splitlines()[-1])["added_ids"]
        last = _items(settings, "block", str(best))
        assert last.returncode == 0, last.stderr[-500:]
        final = json.loads(last.stdout.strip().splitlines()[-1])["catalogue_version"]
        _wait_version(rankserve_url, final)
        top = [it["item_id"] for it in _rank(rankserve_url, user_id=0, k=50)["items"]]
        wait_for_answers(rankserve_url, 60)
        summary, rows = load.finish()
    assert new_id in top and best not in top, (new_id, best, top[:10])
    assert summary["failures"] == 0, summary
    blocked_at = _blocked_by_version(log, base)
    assert sorted(blocked_at) == list(range(final + 1))  # versions 1..final, none missing or twice
    assert set(often[5:30]) | {best} <= blocked_at[final] and not set(often[:5]) & blocked_at[final]
    seen_versions, checked = set(), 0
    for row in rows:
        if row["status"] != 200:
            continue
        resp = row["response"]
        v = resp["catalogue_version"]
        seen_versions.add(v)
        held = {it["item_id"] for it in resp["items"]} & blocked_at[v]
        assert not held, f"an answer carrying catalogue version {v} holds items blocked in it: {held}"
        checked += 1
    print(f"catalogue under load: {summary['requests']} requests, 0 failed, {checked} answers checked, "
          f"versions seen {sorted(seen_versions)}")
    assert len(seen_versions) >= 3 and checked > 100
    _items(settings, "unblock", *map(str, sorted(blocked_at[final])))  # leave the session's catalogue open


@pytest.mark.parametrize(("rows", "reason"), [
    ([{"item_id": 0}], "new items take the next ids"),
    ([{"colour": "red"}], "unknown column(s) ['colour']"),
    ([{"category": 1}], "missing"),
    ("nan", "finite"),
    ("dup", "duplicate item id"),
    ("unknown", "unknown item id"),
    ("not json", "not JSON"),
])
def test_bad_change_files_are_refused_whole(settings, rankserve_url: str, tmp_path: Path, rows: Any,
                                            reason: str) -> None:
    base = FeatureTables.load(settings.marketplace_path)
    log = ChangeLog(settings.model_repository)
    before = log.versions()
    good = {"item_id": 3, "rating": 0.5}
    action, path = "update", tmp_path / "change.jsonl"
    if rows == "nan":
        path.write_text(json.dumps(good) + "\n" + '{"item_id": 4, "rating": NaN}\n')
    elif rows == "dup":
        path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    elif rows == "unknown":
        path.write_text(json.dumps(good) + "\n" + json.dumps({"item_id": base.n_items + 10**6, "rating": 0.1}) + "\n")
    elif rows == "not json":
        path.write_text(json.dumps(good) + "\n{item_id: 4}\n")
    else:
        action = "add"
        path.write_text(json.dumps([_copy_row(base, 1), *rows]))
    out = _items(settings, action, str(path))
    assert out.returncode == 3 and "refused" in out.stderr and reason in out.stderr, out.stderr[-500:]
    assert "Traceback" not in out.stderr
    assert log.versions() == before  # nothing applied, not even the good rows
    assert _rank(rankserve_url, user_id=2)["catalogue_version"] == (before[-1] if before else 0)
