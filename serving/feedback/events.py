"""Events: what users did with what they were shown (a click, an add to cart, an order).

Owns: the body of ``POST /v1/events`` (and of the gRPC ``Events`` method, which decodes to the
same payload) and its validation: all or nothing, the first problem named ``events[i].<field>``
(or ``events`` for an empty or oversized list), the way rank requests name theirs
(:func:`serving.schemas.first_problem`); :data:`EVENT_SCHEMA` (the events' Parquet schema),
:class:`EventRow` and :func:`events_table`. Must not touch: files, the queue, metrics.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictStr
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from serving.errors import InvalidArgumentError, ValidationError
from serving.feedback.served import TIME_TYPE
from serving.schemas import Id, first_problem

__all__ = ["EVENT_SCHEMA", "EVENT_TYPES", "MAX_EVENTS", "Event", "EventRow", "EventsBody", "event_rows",
           "events_table", "parse_events", "validate_events"]

MAX_EVENTS = 1000  # events one call may hold
EVENT_TYPES = ("click", "cart", "order")
_MAX_TS_S = 253402300799  # 9999-12-31T23:59:59Z: the last second a timestamp[ms] column takes here

EVENT_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("item_id", pa.string()),
    ("type", pa.string()),
    ("time", TIME_TYPE),
    ("received", TIME_TYPE),
    ("replica", pa.string()),
])


def _ts(value: Any) -> float:
    """An event's time: epoch seconds (a number) or an ISO 8601 string (UTC when it names no zone)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PydanticCustomError("ts_type", "Input should be epoch seconds (a number) or an ISO 8601 string")
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError as err:
            raise PydanticCustomError("ts_format", "Input should be an ISO 8601 time, got {value!r}",
                                      {"value": value[:64]}) from err
        seconds = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    else:
        seconds = float(value)
    if not 0 <= seconds <= _MAX_TS_S:  # also NaN
        raise PydanticCustomError("ts_range", "Input should be a time from 1970 to 9999 (epoch seconds 0 to "
                                              f"{_MAX_TS_S}), got {{value!r}}", {"value": value})
    return seconds


class Event(BaseModel):
    """One event: ``request_id`` of the answer it follows, the item, its type, its time (optional)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    request_id: StrictStr = Field(min_length=1, max_length=128)
    item_id: Id
    type: Literal["click", "cart", "order"]
    ts: Annotated[float, PlainValidator(_ts)] | None = None


class EventsBody(BaseModel):
    """``POST /v1/events`` body: 1 to :data:`MAX_EVENTS` events."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


def validate_events(payload: Any) -> list[Event]:
    """The events of a decoded payload, every one valid, or the first problem.

    Raises:
        InvalidArgumentError: the payload is not a JSON object (400).
        ValidationError: (422) a malformed event, naming ``events[i].<field>``; an empty list, one of
            more than :data:`MAX_EVENTS`, or none at all, naming ``events``; an unknown field.
    """
    if not isinstance(payload, dict):
        raise InvalidArgumentError(f"request body must be a JSON object, got {type(payload).__name__}", field="body")
    if isinstance(payload.get("events"), list) and len(payload["events"]) > MAX_EVENTS:  # before looking at each
        raise ValidationError(f"events: a call holds at most {MAX_EVENTS} events, got {len(payload['events'])}",
                              field="events")
    try:
        return EventsBody.model_validate(payload).events
    except PydanticValidationError as err:
        p = first_problem(err)
        raise ValidationError(p.message, field=p.where) from err


def parse_events(body: bytes) -> list[Event]:
    """Decode and validate an HTTP body (its size was checked as it was read).

    Raises:
        InvalidArgumentError: not JSON, or not an object (400).
        ValidationError: see :func:`validate_events` (422).
    """
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InvalidArgumentError(f"request body is not valid JSON: {err}", field="body") from err
    return validate_events(payload)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One accepted event as stored (times in epoch milliseconds, UTC)."""

    request_id: str
    item_id: str
    type: str
    time_ms: int
    received_ms: int


def event_rows(events: Sequence[Event], received_ms: int) -> list[EventRow]:
    """The rows of accepted ``events``, received at ``received_ms`` (their time when they give none)."""
    return [EventRow(e.request_id, str(e.item_id), e.type, received_ms if e.ts is None else round(e.ts * 1000),
                     received_ms) for e in events]


def events_table(rows: Sequence[EventRow], replica: str) -> pa.Table:
    """``rows`` as a table of :data:`EVENT_SCHEMA`."""
    return pa.Table.from_arrays([
        pa.array([r.request_id for r in rows], pa.string()), pa.array([r.item_id for r in rows], pa.string()),
        pa.array([r.type for r in rows], pa.string()),
        pa.array([r.time_ms for r in rows], pa.int64()).cast(TIME_TYPE),
        pa.array([r.received_ms for r in rows], pa.int64()).cast(TIME_TYPE),
        pa.array([replica] * len(rows), pa.string()),
    ], schema=EVENT_SCHEMA)
