"""What a load-test answer must satisfy (API contract v1), as one plain function for both protocols.

Owns: the contract check of one answer and how many items a request's answer must hold. Must not
touch: sending requests or locust (no locust import here: the checks are unit-tested on their own).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_answer", "expected_items"]


def expected_items(body: dict[str, Any]) -> int | None:
    """How many items a correct answer has, when that is known from the request alone.

    Given candidates: ``min(k, |candidates - exclude|)``. Recall requests (500 recalled, k <= 100,
    a handful excluded) always have at least ``k``: exactly ``k``. None when it cannot be told.
    """
    k = int(body["k"])
    exclude = set(body.get("exclude", ()))
    if "candidates" in body:
        return min(k, len(set(body["candidates"]) - exclude))
    return k if k + len(exclude) <= 500 else None


def check_answer(body: dict[str, Any], status: int | str, answer: Any, n_items: int) -> str | None:
    """The reason an answer breaks the contract, or None when it is right.

    Args:
        body: the request as sent (JSON fields).
        status: HTTP status, or the gRPC status name of a failed call (a gRPC OK counts as 200).
        answer: the decoded answer (JSON object), or None when it was not JSON.
        n_items: item ids are ``0..n_items-1``.
    """
    if status != 200:
        return f"status {status}: {str(answer)[:200]}"
    if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
        return "answer is not an object with items"
    if answer.get("request_id") != body["request_id"]:
        return "request_id not echoed"
    try:
        ids = [int(it["item_id"]) for it in answer["items"]]
        scores = [float(it["score"]) for it in answer["items"]]
    except (KeyError, TypeError, ValueError):
        return "item without an integer item_id and a numeric score"
    if len(set(ids)) != len(ids):
        return "duplicate items"
    if any(not 0 <= i < n_items for i in ids):
        return "item id outside the catalogue"
    if any(math.isnan(s) for s in scores):
        return "NaN score"
    if not answer.get("degraded") and any(not 0.0 <= s <= 1.0 for s in scores):
        return "ranker score outside [0, 1]"  # degraded answers carry recall scores instead
    if scores != sorted(scores, reverse=True):
        return "items not sorted by score"
    if set(ids) & set(body.get("exclude", ())):
        return "excluded item returned"
    if "candidates" in body and not set(ids) <= set(body["candidates"]):
        return "item outside the given candidates"
    if len(ids) > body["k"]:
        return f"{len(ids)} items, more than k={body['k']}"
    want = expected_items(body)
    if want is not None and len(ids) != want:
        return f"{len(ids)} items, expected {want}"
    return None
