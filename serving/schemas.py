"""Request and response schemas of the v1 ranking API, and their validation.

Owns: the request's fields and their types and ranges, the size limit of a request (one check for
HTTP and gRPC, :func:`check_size`), the translation of pydantic's errors into rankserve's (one for
requests and scenario files, :func:`first_problem`), and the answer's JSON. The limits of settings
and scenario (``k``, ``candidates``, ``exclude``, ``timeout_ms``) are checked once, against the
request's scenario, in ``serving.pipeline.orchestration``. Must not touch: anything above the bottom
layer.

Wire formats stay out of the stages: the ingress turns HTTP JSON (or gRPC) into a
:class:`RankRequest` with :func:`parse_rank_request`, and a :class:`RankResponse` back with
:meth:`RankResponse.to_json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from serving.errors import InvalidArgumentError, PayloadTooLargeError, ValidationError

__all__ = ["Id", "Problem", "RankRequest", "RankResponse", "ScoredItem", "check_size", "first_problem", "parse_rank_request",
           "validate_rank_request"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]
MAX_ID_CHARS = 256


def _id(value: Any) -> int | str:
    """A user's or an item's id: an int64 or a string of 1 to 256 characters (which of the two,
    the data set's schema says; the pipeline checks it)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT64_MIN <= value <= INT64_MAX:
            kind, bound = ("greater_than_equal", INT64_MIN) if value < INT64_MIN else ("less_than_equal", INT64_MAX)
            raise PydanticCustomError(kind, f"Input should be {'>=' if value < 0 else '<='} {bound}")
        return value
    if isinstance(value, str):
        if not value:
            raise PydanticCustomError("string_too_short", "an id must not be empty")
        if len(value) > MAX_ID_CHARS:
            raise PydanticCustomError("string_too_long", f"an id has at most {MAX_ID_CHARS} characters")
        return value
    raise PydanticCustomError("id_type", "Input should be an integer or a string id")


Id = Annotated[int | str, PlainValidator(_id)]  # a user's or an item's id
# pydantic error types refused 422 (well-formed but out of range, unknown or missing); the rest 400
_UNPROCESSABLE = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_long", "too_short",
                  "string_too_long", "string_too_short", "extra_forbidden", "missing"}


class RankRequest(BaseModel):
    """``POST /v1/rank`` body. Only ``user_id`` is required; the limits are checked against the
    scenario's (within the global ones) when the pipeline resolves the scenario."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    user_id: Id  # the data set's ids: integers or strings, as its schema's (checked by the pipeline)
    k: StrictInt | None = Field(None, ge=1)
    candidates: list[Id] | None = None  # unknown ids are dropped and counted (unknown_candidates)
    exclude: list[Id] = Field(default_factory=list)
    request_id: StrictStr | None = Field(None, max_length=128)
    model: StrictStr | None = Field(None, min_length=1, max_length=128)
    timeout_ms: StrictInt | None = Field(None, ge=1)
    scenario: StrictStr | None = Field(None, min_length=1, max_length=64)  # None: "home"
    item_id: Id | None = None  # context: the seed item (item-to-item scenarios)
    shop_id: Int64 | None = None  # context: the shop whose page asks (shop scenarios)
    context: dict[StrictStr, Any] | None = None  # checked against the data set's schema by the pipeline


@dataclass(frozen=True)
class ScoredItem:
    """One ranked item. ``score`` is in [0, 1]; ``recall_score`` is set in degraded answers only."""

    item_id: int | str
    score: float
    recall_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"item_id": self.item_id, "score": self.score}
        if self.recall_score is not None:
            out["recall_score"] = self.recall_score
        return out


@dataclass
class RankResponse:
    """One answer of the ranking pipeline (serialised by :meth:`to_json`)."""

    request_id: str
    items: list[ScoredItem]
    model_name: str
    model_version: int
    recall: str  # "faiss" | "exact" | "content" | "given" | "popular" ("torch_exact": exact search without FAISS, GPU check)
    degraded: bool = False
    cold_start: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    catalogue_version: int = 0  # the catalogue change this answer was served with
    scenario: str = "home"
    scenario_version: int = 0  # the version of the scenario file it was served with (0: built in)
    unknown_candidates: int | None = None  # given candidates not in the catalogue, dropped (None: none given)
    model_role: str = "live"  # which side of the traffic split answered: "live" or "canary" (not in the answer)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "items": [it.to_json() for it in self.items],
            "model": {"name": self.model_name, "version": self.model_version},
            "recall": self.recall,
            "degraded": self.degraded,
            "catalogue_version": self.catalogue_version,
            "scenario": self.scenario,
            "scenario_version": self.scenario_version,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }
        if self.cold_start:
            out["cold_start"] = True
        if self.unknown_candidates is not None:
            out["unknown_candidates"] = self.unknown_candidates
        return out


@dataclass(frozen=True)
class Problem:
    """The first problem pydantic found in a payload, in rankserve's words."""

    where: str  # its path: ``k``, ``candidates[1]``, ``sources[0].count``
    kind: str  # pydantic's error type
    message: str


def first_problem(err: PydanticValidationError, *, noun: str = "field", root: str = "body") -> Problem:
    """The first problem of ``err`` with its path (``root`` when it is the payload's as a whole):
    ``unknown {noun} 'x'``, ``x is required``, or ``x: <pydantic's message>``. Requests and
    scenario files are refused through this one translation."""
    first = err.errors(include_url=False)[0]
    where = ""
    for part in first["loc"]:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    where = where or root
    kind = first["type"]
    if kind == "extra_forbidden":
        message = f"unknown {noun} {where!r}"
    elif kind == "missing":
        message = f"{where} is required"
    else:
        message = f"{where}: {first['msg']}"
    return Problem(where, kind, message)


def check_size(size: int, limit: int, *, what: str = "request body", field: str = "body",
               so_far: bool = False) -> None:
    """The size limit of a request, HTTP body or gRPC message (``settings.max_body_bytes``).

    Args:
        size: its size in bytes, or (``so_far``) the bytes read of it until now.

    Raises:
        PayloadTooLargeError: over the limit (413).
    """
    if size <= limit:
        return
    if so_far:
        raise PayloadTooLargeError(f"{what} exceeds the limit of {limit} bytes", field=field)
    raise PayloadTooLargeError(f"{what} is {size} bytes, the limit is {limit}", field=field)


def validate_rank_request(payload: Any) -> RankRequest:
    """Validate a decoded JSON payload against the schema (types and ranges; the limits of
    settings and scenario are checked where the scenario is resolved, ``RankPipeline.prepare``).

    Raises:
        InvalidArgumentError: wrong shape or types (400).
        ValidationError: out-of-range values, unknown or missing fields (422).
    """
    if not isinstance(payload, dict):
        raise InvalidArgumentError(f"request body must be a JSON object, got {type(payload).__name__}", field="body")
    try:
        return RankRequest.model_validate(payload)
    except PydanticValidationError as err:
        p = first_problem(err)
        cls = ValidationError if p.kind in _UNPROCESSABLE else InvalidArgumentError
        raise cls(p.message, field=p.where) from err


def parse_rank_request(body: bytes) -> RankRequest:
    """Decode and validate an HTTP body (its size was checked as it was read, :func:`check_size`).

    Raises:
        InvalidArgumentError: not JSON, or wrong types (400).
        ValidationError: out-of-range values (422).
    """
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: also an integer of 4,300+ digits
        raise InvalidArgumentError(f"request body is not valid JSON: {err}", field="body") from err
    return validate_rank_request(payload)
