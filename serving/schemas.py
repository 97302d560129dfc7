"""Request and response schemas of the v1 ranking API, and their validation.

Owns: the request's fields, limits and error messages (shared by HTTP and gRPC) and the answer's
JSON. Must not touch: anything above the bottom layer.

Wire formats stay out of the stages: the ingress turns HTTP JSON (or gRPC) into a
:class:`RankRequest` with :func:`parse_rank_request`, and a :class:`RankResponse` back with
:meth:`RankResponse.to_json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from serving.config import Settings
from serving.errors import InvalidArgumentError, PayloadTooLargeError, ValidationError

__all__ = ["RankRequest", "RankResponse", "ScoredItem", "parse_rank_request", "validate_rank_request"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_long", "too_short",
                 "string_too_long", "string_too_short"}


class RankRequest(BaseModel):
    """``POST /v1/rank`` body. Only ``user_id`` is required; limits are checked against settings here,
    and against the scenario's own (within them) when the pipeline resolves the scenario."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    user_id: Int64
    k: StrictInt | None = Field(None, ge=1)
    candidates: list[Int64] | None = None
    exclude: list[Int64] = Field(default_factory=list)
    request_id: StrictStr | None = Field(None, max_length=128)
    model: StrictStr | None = Field(None, min_length=1, max_length=128)
    timeout_ms: StrictInt | None = Field(None, ge=1)
    scenario: StrictStr | None = Field(None, min_length=1, max_length=64)  # None: "home"
    item_id: Int64 | None = None  # context: the seed item (item-to-item scenarios)
    shop_id: Int64 | None = None  # context: the shop whose page asks (shop scenarios)


@dataclass(frozen=True)
class ScoredItem:
    """One ranked item. ``score`` is in [0, 1]; ``recall_score`` is set in degraded answers only."""

    item_id: int
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
    recall: str  # "faiss" | "given" | "popular" ("torch_exact": exact search without FAISS, GPU check)
    degraded: bool = False
    cold_start: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    catalogue_version: int = 0  # the catalogue change this answer was served with
    scenario: str = "home"
    scenario_version: int = 0  # the version of the scenario file it was served with (0: built in)

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
        return out


def _field_name(loc: tuple[Any, ...]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def validate_rank_request(payload: Any, settings: Settings) -> RankRequest:
    """Validate a decoded JSON payload against the schema and the configured limits.

    Raises:
        InvalidArgumentError: wrong shape or types (400).
        ValidationError: out-of-range values or limits exceeded (422).
    """
    if not isinstance(payload, dict):
        raise InvalidArgumentError(f"request body must be a JSON object, got {type(payload).__name__}", field="body")
    try:
        req = RankRequest.model_validate(payload)
    except PydanticValidationError as err:
        first = err.errors(include_url=False)[0]
        fld = _field_name(tuple(first["loc"]))
        kind = first["type"]
        if kind == "extra_forbidden":
            raise ValidationError(f"unknown field {fld!r}", field=fld) from err
        if kind == "missing":
            raise ValidationError(f"{fld} is required", field=fld) from err
        cls = ValidationError if kind in _RANGE_ERRORS else InvalidArgumentError
        raise cls(f"{fld}: {first['msg']}", field=fld) from err
    if req.k is not None and req.k > settings.max_k:
        raise ValidationError(f"k must be in [1, {settings.max_k}], got {req.k}", field="k")
    if req.candidates is not None:
        if len(req.candidates) == 0:
            raise ValidationError("candidates must not be empty (omit it to use recall)", field="candidates")
        if len(req.candidates) > settings.max_candidates:
            raise ValidationError(
                f"at most {settings.max_candidates} candidates per request, got {len(req.candidates)}",
                field="candidates",
            )
    if len(req.exclude) > settings.max_exclude:
        raise ValidationError(f"at most {settings.max_exclude} exclude ids, got {len(req.exclude)}", field="exclude")
    if req.timeout_ms is not None and req.timeout_ms > settings.max_timeout_ms:
        raise ValidationError(
            f"timeout_ms must be in [1, {settings.max_timeout_ms}], got {req.timeout_ms}", field="timeout_ms"
        )
    return req


def parse_rank_request(body: bytes, settings: Settings) -> RankRequest:
    """Decode and validate an HTTP body.

    Raises:
        PayloadTooLargeError: the body exceeds ``max_body_bytes`` (413).
        InvalidArgumentError: not JSON, or wrong types (400).
        ValidationError: out-of-range values (422).
    """
    if len(body) > settings.max_body_bytes:
        raise PayloadTooLargeError(
            f"request body is {len(body)} bytes, the limit is {settings.max_body_bytes}", field="body"
        )
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: also an integer of 4,300+ digits
        raise InvalidArgumentError(f"request body is not valid JSON: {err}", field="body") from err
    return validate_rank_request(payload, settings)
