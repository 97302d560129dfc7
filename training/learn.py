"""``rankserve learn NAME``: learn from what users did, within minutes.

Owns: the loop (:func:`run_loop`): every ``every_s`` seconds (1) join the newest window of the
served log and the events, (2) fine-tune the live ranker from its weights (:func:`fine_tune`),
(3) validate it on the window's held-out tail, (4) push it as a canary, (5) judge it once enough
impressions reached it, (6) promote or roll it back; one JSON log line a step. A step that fails
leaves the live model serving (a canary already pushed is rolled back) and the loop goes on. The
joined window becomes the data set's impression columns as ``rankserve log join`` writes them
(``serving.feedback.dataset.as_impressions``: the served context too). Must not touch: the log's and the events' files (``serving.feedback`` joins and judges them),
the repository's layout (``serving.repository.push`` writes versions and moves traffic), argument
parsing (``serving.cli``).

A ranker is fine-tuned on the features the serving path assembles
(``serving.data.assembly.feature_table``, the function behind ``rankserve features``), so it
learns exactly the inputs it is served. Only a TorchScript ranker (``model.pt``) can be: an ONNX
ranker holds no trainable parameters and is refused, saying so.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from serving.data.features import DEMO_FEATURES
from serving.errors import RankserveError
from serving.feedback.join import IdTypes
from serving.feedback.paths import log_root
from serving.pipeline.crossing import FEATURES_YAML
from serving.triton.onnx import ONNX_FILE, TORCHSCRIPT_FILE
from training.metrics import auc, log_loss

if TYPE_CHECKING:
    from serving.config import Settings
    from serving.data.tables import DataTables
    from serving.repository.push import ModelLoader

__all__ = ["FineTuned", "LearnError", "LearnSteps", "ServerSteps", "Verdict", "fine_tune", "run_loop"]

HOLDOUT = 0.2  # the newest share of a window's impressions, held out to validate the fine-tuned ranker
WORSE_TOLERANCE = 0.01  # validation refuses a ranker whose held-out log loss is this much (relative) worse
SETTLE_S = 2.0  # beyond a log rotation: how old an answer must be before the judge counts it
MIN_ROWS = 200  # a window with fewer joined impressions (or no click) is not learned from


class LearnError(RankserveError):
    """A step of the loop could not be done (the reason is its message); the live model keeps serving."""


@dataclass(frozen=True)
class Verdict:
    """The judge's word on a canary: whether enough impressions reached it, whether it is better, and why."""

    enough: bool
    better: bool
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class FineTuned:
    """A ranker fine-tuned on a window: the module and its figures (train loss before and after,
    held-out log loss and AUC of the live ranker and of this one)."""

    module: Any
    figures: dict[str, Any]

    def validate(self, tolerance: float = WORSE_TOLERANCE) -> dict[str, Any]:
        """The figures, when the fine-tuned ranker is no worse than live on the held-out tail.

        Raises:
            LearnError: its held-out log loss is worse (or not finite).
        """
        before, after = self.figures["holdout_log_loss_live"], self.figures["holdout_log_loss"]
        if not np.isfinite(after) or after > before * (1 + tolerance):
            raise LearnError(f"the fine-tuned ranker is worse than live on the held-out window: log loss "
                             f"{after:.5f} against {before:.5f}")
        return self.figures


class LearnSteps(Protocol):
    """The loop's contact with the world: one small wrapper a step."""

    def join(self, since: datetime, until: datetime) -> pa.Table: ...
    def fine_tune(self, joined: pa.Table) -> FineTuned: ...
    def push_canary(self, tuned: FineTuned) -> int: ...
    def judge(self, version: int, since: datetime) -> Verdict: ...
    def promote(self, version: int) -> None: ...
    def rollback(self, version: int) -> None: ...


def _inputs(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cat int64 [n, C], dense float32 [n, D], label float32 [n]) of a feature table."""
    n = table.num_rows
    cat = np.array(table.column("cat").combine_chunks().flatten(), np.int64).reshape(n, -1)  # copies: torch writes
    dense = np.array(table.column("dense").combine_chunks().flatten(), np.float32).reshape(n, -1)
    return cat, dense, np.array(table.column("label").to_numpy(zero_copy_only=False), np.float32)


def fine_tune(model_dir: Path, features: Path, tables: DataTables, encoded: pa.Table, *, epochs: int = 3,
              lr: float = 2e-3, batch: int = 512, seed: int = 0) -> FineTuned:
    """The TorchScript ranker in ``model_dir`` trained further (from its weights) on ``encoded``
    impressions (time order: the newest :data:`HOLDOUT` share held out), its inputs assembled by the
    serving path's ``feature_table`` under the declaration ``features``.

    Raises:
        LearnError: the ranker is ONNX (no trainable parameters), has no model, or the window is too small.
    """
    import torch

    from kernels import get_crosser
    from serving.data.assembly import feature_table
    from serving.data.features import load_features

    if (model_dir / ONNX_FILE).is_file():
        raise LearnError(f"{model_dir} is an ONNX ranker ({ONNX_FILE}): ONNX holds no trainable parameters here, so "
                         "it cannot be fine-tuned; learn fine-tunes TorchScript rankers (model.pt)")
    if not (model_dir / TORCHSCRIPT_FILE).is_file():
        raise LearnError(f"{model_dir} has no {TORCHSCRIPT_FILE} to fine-tune")
    labels = np.asarray(encoded.column("label").to_numpy(zero_copy_only=False))
    if encoded.num_rows < MIN_ROWS or labels.sum() == 0:
        raise LearnError(f"not enough to learn from: {encoded.num_rows} impressions, {int(labels.sum())} clicks "
                         f"(at least {MIN_ROWS} impressions and one click)")
    if "time" in encoded.column_names:
        encoded = encoded.take(pa.array(np.argsort(encoded.column("time").to_numpy(), kind="stable")))
    cat, dense, y = _inputs(feature_table(tables, encoded, load_features(features), get_crosser("auto")))
    cut = int(len(y) * (1 - HOLDOUT))
    module = torch.jit.load(str(model_dir / TORCHSCRIPT_FILE), map_location="cpu")
    figures: dict[str, Any] = {"impressions": int(len(y)), "clicks": int(y.sum()), "train": cut,
                               "holdout": int(len(y) - cut)}
    live = _scores(module, cat[cut:], dense[cut:])
    figures["train_loss_before"] = _loss(module, cat[:cut], dense[:cut], y[:cut])
    _train(module, cat[:cut], dense[:cut], y[:cut], epochs=epochs, lr=lr, batch=batch, seed=seed)
    figures["train_loss_after"] = _loss(module, cat[:cut], dense[:cut], y[:cut])
    tuned = _scores(module, cat[cut:], dense[cut:])
    held = y[cut:]
    figures |= {"holdout_log_loss_live": round(log_loss(live, held), 6), "holdout_log_loss": round(log_loss(tuned, held), 6),
                "holdout_auc_live": _auc(live, held), "holdout_auc": _auc(tuned, held)}
    return FineTuned(module.eval(), figures)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    return round(auc(scores, labels), 5) if 0 < labels.sum() < labels.size else None


def _scores(module: Any, cat: np.ndarray, dense: np.ndarray) -> np.ndarray:
    import torch

    module.eval()
    with torch.inference_mode():
        return module(torch.from_numpy(cat), torch.from_numpy(dense)).reshape(-1).numpy().astype(np.float64)


def _loss(module: Any, cat: np.ndarray, dense: np.ndarray, y: np.ndarray) -> float:
    return round(log_loss(_scores(module, cat, dense), y), 6)


def _train(module: Any, cat: np.ndarray, dense: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, batch: int,
           seed: int) -> None:
    """Binary cross-entropy on the module's P(click), in seeded shuffled mini-batches (dense gradients)."""
    import torch

    params = list(module.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    module.train()
    c, d, t = torch.from_numpy(cat), torch.from_numpy(dense), torch.from_numpy(y)
    for _ in range(epochs):
        for b in np.array_split(rng.permutation(len(y)), max(1, len(y) // batch)):
            idx = torch.from_numpy(b)
            p = module(c[idx], d[idx]).reshape(-1).clamp(1e-6, 1 - 1e-6)
            loss = torch.nn.functional.binary_cross_entropy(p, t[idx])
            opt.zero_grad()
            loss.backward()
            for q in params:  # an embedding built sparse gives sparse gradients: Adam takes dense ones
                if q.grad is not None and q.grad.is_sparse:
                    q.grad = q.grad.to_dense()
            opt.step()
    module.eval()


def _line(emit: Callable[[str], None], iteration: int, step: str, t0: float, **fields: Any) -> None:
    emit(json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "iteration": iteration,
                     "step": step, "s": round(time.monotonic() - t0, 3), **fields}, default=str))


@dataclass
class _Iteration:
    """One pass of the loop, its steps logged by :meth:`step`."""

    steps: LearnSteps
    n: int
    emit: Callable[[str], None]
    canary: int | None = None

    def step(self, name: str, fn: Callable[[], Any], describe: Callable[[Any], dict[str, Any]]) -> Any:
        """Run ``fn``; one line with ``describe(result)`` (or the error); re-raise a failure as :class:`_Failed`."""
        t0 = time.monotonic()
        try:
            out = fn()
        except Exception as err:  # noqa: BLE001 - a failing step is logged, the live model keeps serving
            _line(self.emit, self.n, name, t0, ok=False, error=f"{type(err).__name__}: {err}".splitlines()[0])
            raise _Failed from err
        _line(self.emit, self.n, name, t0, ok=True, **describe(out))
        return out

    def undo_canary(self) -> None:
        """Roll back a canary this pass pushed and did not settle (logged; a failure is logged too)."""
        if self.canary is None:
            return
        version, self.canary = self.canary, None
        try:
            self.step("rollback", lambda: self.steps.rollback(version), lambda _: {"version": version, "why": "failed step"})
        except _Failed:
            pass


class _Failed(Exception):
    """A step failed (already logged)."""


def _one_pass(it: _Iteration, since: datetime, until: datetime) -> None:
    joined = it.step("join", lambda: it.steps.join(since, until),
                     lambda t: {"since": since.isoformat(), "until": until.isoformat(), "impressions": t.num_rows})
    tuned = it.step("fine_tune", lambda: it.steps.fine_tune(joined), lambda f: dict(f.figures))
    it.step("validate", tuned.validate, lambda f: {"holdout_log_loss": f["holdout_log_loss"],
                                                   "holdout_log_loss_live": f["holdout_log_loss_live"]})
    pushed_at = datetime.now(timezone.utc)
    it.canary = it.step("push", lambda: it.steps.push_canary(tuned), lambda v: {"version": v})
    version = int(it.canary)
    verdict = it.step("judge", lambda: it.steps.judge(version, pushed_at),
                      lambda v: {"version": version, "enough": v.enough, "better": v.better, "reason": v.reason,
                                 **v.figures})
    if verdict.enough and verdict.better:
        it.step("promote", lambda: it.steps.promote(version), lambda _: {"version": version, "why": verdict.reason})
    else:
        it.step("rollback", lambda: it.steps.rollback(version), lambda _: {"version": version, "why": verdict.reason})
    it.canary = None


def run_loop(steps: LearnSteps, *, every_s: float, for_s: float | None = None, window_s: float | None = None,
             emit: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> int:
    """Run passes every ``every_s`` seconds (for ``for_s`` seconds; None: until interrupted), each
    over the impressions served in the newest ``window_s`` (default ``2 * every_s``: answers still in
    a log file not yet closed at one pass are learned at the next) seconds; returns the passes run.
    A failing step ends its pass only; Ctrl-C rolls back a canary the pass left."""
    start = clock()
    window = timedelta(seconds=window_s or 2 * every_s)
    n = 0
    while for_s is None or clock() - start < for_s:
        it = _Iteration(steps, n, emit)
        until = datetime.now(timezone.utc)
        try:
            _one_pass(it, until - window, until)
        except _Failed:
            it.undo_canary()
        finally:
            if it.canary is not None:  # interrupted mid-pass
                it.undo_canary()
        n += 1
        wait = start + n * every_s - clock()
        if for_s is not None:
            wait = min(wait, start + for_s - clock())
        if wait > 0:
            sleep(wait)
    return n


class ServerSteps:
    """The steps against this machine's repository, log and running Triton (the ``rankserve learn`` command's)."""

    def __init__(self, settings: Settings, ranker: str, triton: ModelLoader, *, canary_percent: float = 10.0,
                 min_impressions: int = 2000, judge_timeout_s: float = 120.0, epochs: int = 3) -> None:
        from serving.data.store import DataSetStore
        from serving.pipeline.assemble import load_tables
        from serving.repository.registry import ModelRegistry

        self.settings, self.ranker, self.triton = settings, ranker, triton
        self.registry = ModelRegistry.of(settings)
        self.tables = load_tables(settings)
        self.dataset = DataSetStore.of(settings).dataset(settings.data)
        self.canary_percent, self.min_impressions = canary_percent, min_impressions
        self.judge_timeout_s, self.epochs = judge_timeout_s, epochs
        self._dir = Path(tempfile.mkdtemp(prefix="rankserve-learn-"))

    def _live_dir(self) -> Path:
        return self.registry.repo / self.ranker / str(self.registry.traffic(self.ranker).live)

    def join(self, since: datetime, until: datetime) -> pa.Table:
        from serving.feedback.join import join_logs

        return join_logs(log_root(self.settings), IdTypes.of(self.tables), since=since, until=until,
                         attribution_window_s=self.settings.attribution_window_s).table

    def _features(self, version: int) -> Path:
        """The declaration a version of the ranker is fed by: its own, else the demo's layout."""
        own = self.registry.repo / self.ranker / str(version) / FEATURES_YAML
        return own if own.is_file() else DEMO_FEATURES

    def fine_tune(self, joined: pa.Table) -> FineTuned:
        from serving.feedback.dataset import as_impressions

        live = self._live_dir()
        features = self._features(int(live.name))
        encoded, _, _ = as_impressions(joined, self.tables, self.dataset.impressions().schema)
        tuned = fine_tune(live, features, self.tables, encoded, epochs=self.epochs)
        tuned.figures["from_version"] = int(live.name)
        # where the declaration is, not this machine's path: in the model repository, or the package's
        tuned.figures["features"] = (f"{self.ranker}/{live.name}/{FEATURES_YAML}" if features != DEMO_FEATURES
                                     else f"serving/data/{DEMO_FEATURES.name}")
        return tuned

    def push_canary(self, tuned: FineTuned) -> int:
        import torch

        from serving.repository.push import push

        with _artifact(self._dir) as folder:
            torch.jit.save(tuned.module, str(folder / TORCHSCRIPT_FILE))
            (folder / FEATURES_YAML).write_text(self._features(tuned.figures["from_version"]).read_text())
            result = push(self.registry, self.ranker, folder, self.tables, self.triton,
                          canary_percent=self.canary_percent, keep_others=self.settings.triton_keep_versions,
                          impressions=self.dataset.impressions(), data_set=self.settings.data)
        return result.version

    def judge(self, version: int, since: datetime) -> Verdict:
        deadline = time.monotonic() + self.judge_timeout_s
        while True:
            verdict = judge_window(self.settings, IdTypes.of(self.tables), self.ranker, version, since,
                                   self.min_impressions)
            if verdict.enough or time.monotonic() >= deadline:
                return verdict
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))

    def promote(self, version: int) -> None:
        from serving.repository.push import promote

        promote(self.registry, self.ranker)

    def rollback(self, version: int) -> None:
        from serving.repository.push import rollback

        if self.registry.traffic(self.ranker).canary_version == version:
            rollback(self.registry, self.ranker, None, self.triton, keep_others=self.settings.triton_keep_versions)


def judge_window(settings: Settings, schema: Any, ranker: str, version: int, since: datetime,
                 min_impressions: int) -> Verdict:
    """The judge's verdict (``serving.feedback.judge``) on canary ``version`` against live, over the
    answers served since ``since`` and settled: at least a log rotation (and a flush) old, so their
    clicks are in closed event files. Newer answers would count as unclicked, and the canary's,
    all new, the most: it would be judged worse than it is."""
    from serving.feedback.join import join_logs
    from serving.feedback.judge import judge

    until = datetime.now(timezone.utc) - timedelta(seconds=settings.log_rotate_s + SETTLE_S)
    joined = join_logs(log_root(settings), schema, since, until, attribution_window_s=settings.attribution_window_s)
    report = judge(joined.table, ranker, canary=version, counts=joined.counts)
    better, reason = report.canary_better(min_impressions)
    arms = {"live": report.live, "canary": report.canary}
    figures = {f"{role}_{k}": getattr(arm, k) for role, arm in arms.items() if arm is not None
               for k in ("version", "impressions", "ctr")}
    enough = all(arm is not None and arm.impressions >= min_impressions for arm in arms.values())
    return Verdict(enough, better, reason, figures)


@contextmanager
def _artifact(parent: Path) -> Iterator[Path]:
    """A fresh artifact folder under ``parent``, removed afterwards (the push copies what it keeps)."""
    import shutil

    folder = Path(tempfile.mkdtemp(dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
