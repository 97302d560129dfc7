"""Quality metrics: AUC (rank-based, ties averaged), log loss, expected calibration error, NDCG@k."""

from __future__ import annotations

import numpy as np

__all__ = ["auc", "ece", "log_loss", "ndcg_at_k"]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney statistic; tied scores share their mean rank."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1) > 0.5
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average ranks over runs of equal scores
    boundaries = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [s.size]])
    avg = (starts + ends + 1) / 2.0  # 1-based mean rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of click probabilities against 0/1 labels."""
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: the mean |predicted - observed click rate| over equal-count bins
    of the predictions, weighted by bin size (equal-count bins suit click rates of a few percent,
    where equal-width bins would leave all but the first empty)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    order = np.argsort(p, kind="mergesort")
    err = 0.0
    for part in np.array_split(order, bins):
        if part.size:
            err += part.size * abs(float(p[part].mean()) - float(y[part].mean()))
    return err / p.size


def ndcg_at_k(gains: np.ndarray, ideal: np.ndarray, k: int) -> float:
    """NDCG@k of one ranked list: ``gains`` are the true gains in served order, ``ideal`` the gains
    of the best possible list (any order: the top k are taken)."""
    g = np.asarray(gains, dtype=np.float64)[:k]
    best = np.sort(np.asarray(ideal, dtype=np.float64))[::-1][:k]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    idcg = float((best * discount[: best.size]).sum())
    return float((g * discount[: g.size]).sum()) / idcg if idcg > 0 else 0.0
