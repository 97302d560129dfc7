"""``rankserve learn``: the fine-tune learns a shift of tastes from the serving path's own features,
an ONNX ranker is refused, a joined window's served context reaches the fine-tune, and the loop's steps
(with fakes for the small wrappers only) promote a better canary, roll back a worse one and leave
the live model serving when any step fails."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from serving.config import Settings
from serving.data.store import DataSetStore
from serving.data.tables import DataTables
from serving.feedback.dataset import as_impressions
from tests.unit.test_serve_dataset import _import
from training.learn import MIN_ROWS, FineTuned, LearnError, Verdict, fine_tune, run_loop
from training.synthetic import write_marketplace

FEATURES = "cat: [item.department]\ndense: [item.list_price]\n"


class ByDepartment(torch.nn.Module):
    """P(click) from one weight per department (and the price): it can learn which departments are liked."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(64, 1)
        self.lin = torch.nn.Linear(1, 1)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.emb(cat[:, 0]) + self.lin(dense[:, :1]) - 3.0)


@dataclass(frozen=True)
class Shop:
    tables: DataTables
    impressions: pa.Table
    ranker: Path


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    root = tmp_path_factory.mktemp("learn")
    files = write_marketplace(root / "files", n_items=300, n_users=120, n_impressions=6_000, seed=4)
    _import(root / "data", files, "shop")
    ds = DataSetStore.of(Settings(data_dir=root / "data")).dataset("shop")
    ranker = root / "ranker"
    ranker.mkdir()
    torch.jit.script(ByDepartment()).save(str(ranker / "model.pt"))
    (ranker / "features.yaml").write_text(FEATURES)
    return Shop(ds.tables(), ds.impressions(), ranker)


def _shifted(shop: Shop, seed: int = 0) -> pa.Table:
    """The data set's impressions with clicks drawn anew: three departments are now liked (p 0.5), the rest not (0.02)."""
    dept = shop.tables.item_cat[shop.impressions.column("item_row").to_numpy(), shop.tables.cat_col("item.department")]
    p = np.where(np.isin(dept, [1, 2, 3]), 0.5, 0.02)
    label = (np.random.default_rng(seed).random(p.size) < p).astype(np.int8)
    return shop.impressions.set_column(shop.impressions.column_names.index("label"), "label", pa.array(label))


def test_the_fine_tune_learns_a_shift_of_tastes(shop: Shop) -> None:
    tuned = fine_tune(shop.ranker, shop.ranker / "features.yaml", shop.tables, _shifted(shop), epochs=3, lr=0.05)
    f = tuned.figures
    assert f["impressions"] == shop.impressions.num_rows and f["clicks"] > 0
    assert f["train_loss_after"] < 0.8 * f["train_loss_before"]
    assert f["holdout_log_loss"] < f["holdout_log_loss_live"]
    assert f["holdout_auc"] > f["holdout_auc_live"] and f["holdout_auc"] > 0.75
    assert tuned.validate() is f
    before = torch.jit.load(str(shop.ranker / "model.pt"))
    assert not torch.equal(before.emb.weight, tuned.module.emb.weight)  # the file on disk is untouched


def test_validation_refuses_a_ranker_worse_on_the_held_out_tail() -> None:
    worse = FineTuned(None, {"holdout_log_loss_live": 0.10, "holdout_log_loss": 0.12})
    with pytest.raises(LearnError, match="worse than live"):
        worse.validate()
    assert FineTuned(None, {"holdout_log_loss_live": 0.10, "holdout_log_loss": 0.1005}).validate()


def test_an_onnx_ranker_or_a_window_too_small_is_refused(shop: Shop, tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    (tmp_path / "features.yaml").write_text(FEATURES)
    with pytest.raises(LearnError, match="ONNX .* cannot be fine-tuned"):
        fine_tune(tmp_path, tmp_path / "features.yaml", shop.tables, shop.impressions)
    with pytest.raises(LearnError, match="not enough to learn from"):
        fine_tune(shop.ranker, shop.ranker / "features.yaml", shop.tables, shop.impressions.slice(0, MIN_ROWS - 1))


def test_the_served_context_of_a_joined_window_reaches_the_fine_tune(shop: Shop, tmp_path: Path) -> None:
    """The loop encodes a joined window as ``log join`` adds it (``as_impressions``), the served
    context too: a ranker fed ``context.device`` learns that answers on iOS were clicked and those
    on the web were not (an unknown user's and an unknown item's rows are left out)."""
    ranker = tmp_path / "ranker"
    ranker.mkdir()
    torch.jit.script(ByDepartment()).save(str(ranker / "model.pt"))
    (ranker / "features.yaml").write_text("cat: [context.device]\ndense: [item.list_price]\n")
    t, n = shop.tables, 1200
    rng = np.random.default_rng(1)
    device = np.where(np.arange(n) % 2 == 0, "ios", "web")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    joined = pa.table({
        "user_id": t.user_ids[rng.integers(0, t.n_users, n)].tolist()[:-1] + ["nobody"],
        "item_id": ["gone"] + t.item_ids[rng.integers(0, t.n_items, n)].tolist()[1:],
        "click": pa.array((device == "ios") & (rng.random(n) < 0.6), pa.int8()),
        "time": pa.array([start + timedelta(seconds=i) for i in range(n)], pa.timestamp("ms", "UTC")),
        "context": [json.dumps({"device": d}) for d in device]})
    encoded, unknown_users, unknown_items = as_impressions(joined, t, shop.impressions.schema)
    assert (encoded.num_rows, unknown_users, unknown_items) == (n - 2, 1, 1)
    tuned = fine_tune(ranker, ranker / "features.yaml", t, encoded, epochs=40, lr=0.1)
    codes = torch.tensor([[t.vocab["context.device"]["ios"]], [t.vocab["context.device"]["web"]]])
    with torch.inference_mode():
        ios, web = tuned.module(codes, torch.zeros(2, 1)).reshape(-1).tolist()
    assert ios > 0.4 and web < 0.1, (ios, web)


@dataclass
class FakeSteps:
    """The loop's wrappers, recording calls; ``fail`` names the step that raises, ``verdict`` the judge's word."""

    fail: str | None = None
    verdict: Verdict = field(default_factory=lambda: Verdict(True, True, "canary better"))
    calls: list[tuple[str, Any]] = field(default_factory=list)
    live: int = 1
    canary: int | None = None

    def _maybe_fail(self, step: str) -> None:
        self.calls.append((step, None))
        if self.fail == step:
            raise RuntimeError(f"{step} broke")

    def join(self, since: datetime, until: datetime) -> pa.Table:
        self._maybe_fail("join")
        assert until - since == timedelta(seconds=60)  # two passes
        return pa.table({"x": [1, 2, 3]})

    def fine_tune(self, joined: pa.Table) -> FineTuned:
        self._maybe_fail("fine_tune")
        return FineTuned(object(), {"holdout_log_loss_live": 0.2, "holdout_log_loss": 0.1})

    def push_canary(self, tuned: FineTuned) -> int:
        self._maybe_fail("push")
        self.canary = self.live + 1
        return self.canary

    def judge(self, version: int, since: datetime) -> Verdict:
        self._maybe_fail("judge")
        return self.verdict

    def promote(self, version: int) -> None:
        self._maybe_fail("promote")
        self.live, self.canary = version, None

    def rollback(self, version: int) -> None:
        self._maybe_fail("rollback")
        assert version == self.canary
        self.canary = None


def _run(steps: FakeSteps, passes: int = 1) -> list[dict[str, Any]]:
    lines: list[str] = []
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    n = run_loop(steps, every_s=30, for_s=30 * passes, emit=lines.append, clock=lambda: clock[0], sleep=sleep)
    assert n == passes
    return [json.loads(ln) for ln in lines]


def test_a_better_canary_is_promoted_one_line_a_step() -> None:
    steps = FakeSteps()
    lines = _run(steps)
    assert [ln["step"] for ln in lines] == ["join", "fine_tune", "validate", "push", "judge", "promote"]
    assert all(ln["ok"] for ln in lines) and steps.live == 2 and steps.canary is None
    assert lines[3]["version"] == 2 and lines[4]["better"] is True


def test_a_canary_not_better_or_without_enough_data_is_rolled_back() -> None:
    for verdict in (Verdict(True, False, "not better"), Verdict(False, False, "not enough data")):
        steps = FakeSteps(verdict=verdict)
        lines = _run(steps)
        assert lines[-1]["step"] == "rollback" and lines[-1]["why"] == verdict.reason
        assert steps.live == 1 and steps.canary is None


@pytest.mark.parametrize("step", ["join", "fine_tune", "push", "judge", "promote"])
def test_a_failing_step_leaves_live_serving_and_the_loop_goes_on(step: str) -> None:
    steps = FakeSteps(fail=step)
    lines = _run(steps, passes=2)
    failed = [ln for ln in lines if not ln["ok"]]
    assert [ln["step"] for ln in failed] == [step, step] and "broke" in failed[0]["error"]
    assert steps.live == 1 and steps.canary is None  # a canary pushed before the failure is rolled back
    assert sum(1 for ln in lines if ln["step"] == "join") == 2
    if step in ("judge", "promote"):
        assert [ln["why"] for ln in lines if ln["step"] == "rollback"] == ["failed step", "failed step"]
