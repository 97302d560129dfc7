"""The gRPC wire format of the v1 ranking API (``rankserve.v1.Ranker/Rank`` and ``/Events``, ``proto/ranker.proto``).

Owns: conversion, and the ``Rank`` and ``Events`` methods of :class:`GrpcIngress` (a mixin the Serve deployment
inherits). A request message becomes the same payload an HTTP body decodes to, so both protocols
share one validation (:func:`serving.schemas.validate_rank_request`, the size limit by
:func:`serving.schemas.check_size`) with the same messages and field names; a :class:`RankResponse` becomes a response message; an error becomes its gRPC
status from the one error table (``serving.errors``). Must not touch: ranking logic, Ray.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, TypeVar

import grpc

from serving.errors import RankserveError, ValidationError
from serving.feedback.events import Event, validate_events
from serving.proto import ranker_pb2
from serving.schemas import RankRequest, RankResponse, check_size, validate_rank_request
from serving.service import RankService

__all__ = [
    "ERROR_CODE_KEY",
    "ERROR_FIELD_KEY",
    "SERVICER_FUNCTION",
    "GrpcContext",
    "GrpcIngress",
    "error_status",
    "events_payload",
    "request_payload",
    "response_message",
]

# Import path Serve's gRPC proxy loads to register the service.
SERVICER_FUNCTION = "serving.proto.ranker_pb2_grpc.add_RankerServicer_to_server"
# Trailing metadata of an error answer: the error code and the offending field, as in the JSON body.
ERROR_CODE_KEY = "rankserve-error-code"
ERROR_FIELD_KEY = "rankserve-error-field"

M = TypeVar("M")

_OPTIONAL = ("user_id", "k", "timeout_ms", "item_id", "shop_id")
_STRINGS = ("request_id", "model", "scenario")


def request_payload(msg: ranker_pb2.RankRequest, max_bytes: int) -> dict[str, Any]:
    """The HTTP-equivalent payload of a request message: fields that are set, nothing else.

    proto3 has no presence for repeated fields: empty ``candidates`` means "recall", and empty
    strings mean "not given".

    Raises:
        PayloadTooLargeError: the serialised message exceeds ``max_bytes`` (the HTTP body limit).
    """
    check_size(msg.ByteSize(), max_bytes, what="request", field="request")
    payload: dict[str, Any] = {name: getattr(msg, name) for name in _OPTIONAL if msg.HasField(name)}
    if msg.candidates:
        payload["candidates"] = list(msg.candidates)
    if msg.exclude:
        payload["exclude"] = list(msg.exclude)
    payload.update({name: getattr(msg, name) for name in _STRINGS if getattr(msg, name)})
    _string_ids(msg, payload)
    return payload


def _string_ids(msg: ranker_pb2.RankRequest, payload: dict[str, Any]) -> None:
    """The string-id fields (``user_id_str``...) and ``context_json`` into ``payload``, under the
    HTTP API's names.

    Raises:
        ValidationError: a field given both ways, or a context that is no JSON object.
    """
    given = {"user_id": msg.HasField("user_id_str") and msg.user_id_str, "item_id": msg.HasField("item_id_str")
             and msg.item_id_str, "candidates": list(msg.candidates_str), "exclude": list(msg.exclude_str)}
    for name, value in given.items():
        if value is False or value == []:
            continue
        if name in payload:
            raise ValidationError(f"give {name} or {name}_str, not both", field=name)
        payload[name] = value
    if msg.context_json:
        try:
            context = json.loads(msg.context_json)
        except ValueError as err:
            raise ValidationError(f"context_json is not JSON: {err}", field="context") from err
        payload["context"] = context


def events_payload(msg: ranker_pb2.EventsRequest, max_bytes: int) -> dict[str, Any]:
    """The HTTP-equivalent payload of an events message: each event's fields that are set, under
    the HTTP API's names (``item_id_str`` as ``item_id``, ``ts_str`` as ``ts``; empty strings are
    not given).

    Raises:
        PayloadTooLargeError: the serialised message exceeds ``max_bytes`` (the HTTP body limit).
        ValidationError: an event giving a field both ways, naming ``events[i].<field>``.
    """
    check_size(msg.ByteSize(), max_bytes, what="request", field="request")
    events = []
    for i, e in enumerate(msg.events):
        event: dict[str, Any] = {name: getattr(e, name) for name in ("request_id", "type") if getattr(e, name)}
        for name in ("item_id", "ts"):
            given = [getattr(e, f) for f in (name, f"{name}_str") if e.HasField(f)]
            if len(given) > 1:
                raise ValidationError(f"events[{i}]: give {name} or {name}_str, not both", field=f"events[{i}].{name}")
            if given:
                event[name] = given[0]
        events.append(event)
    return {"events": events}


def response_message(res: RankResponse) -> ranker_pb2.RankResponse:
    """The response message of one answer (the same content as :meth:`RankResponse.to_json`)."""
    return ranker_pb2.RankResponse(
        request_id=res.request_id,
        items=[ranker_pb2.ScoredItem(item_id=it.item_id if isinstance(it.item_id, int) else 0,
                                     item_id_str=it.item_id if isinstance(it.item_id, str) else "",
                                     score=it.score, recall_score=it.recall_score)
               for it in res.items],
        model=ranker_pb2.ModelVersion(name=res.model_name, version=res.model_version),
        recall=res.recall,
        degraded=res.degraded,
        cold_start=res.cold_start,
        catalogue_version=res.catalogue_version,
        scenario=res.scenario,
        scenario_version=res.scenario_version,
        unknown_candidates=res.unknown_candidates,
        timings_ms={stage: round(ms, 3) for stage, ms in res.timings_ms.items()},
    )


def error_status(err: RankserveError) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    """(status code, details, trailing metadata) of an error answer."""
    metadata = [(ERROR_CODE_KEY, err.code)]
    if err.field is not None:
        metadata.append((ERROR_FIELD_KEY, err.field))
    if err.retry_after_s is not None:
        metadata.append(("retry-after", err.headers()["Retry-After"]))
    return grpc.StatusCode[err.grpc_code], err.message, metadata


class GrpcContext(Protocol):
    """The part of Serve's gRPC context an error answer sets (``ray.serve.grpc_util.RayServegRPCContext``)."""

    def set_code(self, code: grpc.StatusCode) -> None: ...
    def set_details(self, details: str) -> None: ...
    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str]]) -> None: ...
    def invocation_metadata(self) -> Sequence[tuple[str, str]]: ...


def _metadata(context: GrpcContext, key: str) -> str | None:
    """The value of the request's metadata ``key`` (gRPC keys are lower case), if sent."""
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v
    return None


class GrpcIngress:
    """``rankserve.v1.Ranker/Rank`` over ``self.service`` (set by the class that inherits this)."""

    service: RankService

    async def Rank(self, request: ranker_pb2.RankRequest,  # noqa: N802 - the gRPC method's name
                   grpc_context: GrpcContext) -> ranker_pb2.RankResponse:
        """gRPC: the same rules as HTTP; errors as statuses with code and field in trailing metadata."""
        limit = self.service.settings.max_body_bytes

        async def read() -> RankRequest:
            return validate_rank_request(request_payload(request, limit))

        async def answer() -> ranker_pb2.RankResponse:
            return response_message(await self.service.rank(read, _metadata(grpc_context, "authorization")))

        return await _or_status(grpc_context, answer(), ranker_pb2.RankResponse())

    async def Events(self, request: ranker_pb2.EventsRequest,  # noqa: N802 - the gRPC method's name
                     grpc_context: GrpcContext) -> ranker_pb2.EventsResponse:
        """gRPC: the same rules as ``POST /v1/events``; errors as :meth:`Rank`'s."""
        limit = self.service.settings.max_body_bytes

        async def read() -> list[Event]:
            return validate_events(events_payload(request, limit))

        async def answer() -> ranker_pb2.EventsResponse:
            accepted = await self.service.post_events(read, _metadata(grpc_context, "authorization"))
            return ranker_pb2.EventsResponse(accepted=accepted)

        return await _or_status(grpc_context, answer(), ranker_pb2.EventsResponse())


async def _or_status(grpc_context: GrpcContext, answer: Awaitable[M], empty: M) -> M:
    """``answer``'s message, or ``empty`` with the error's status, details and trailing metadata set."""
    try:
        return await answer
    except RankserveError as err:
        code, details, trailing = error_status(err)
        grpc_context.set_code(code)
        grpc_context.set_details(details)
        grpc_context.set_trailing_metadata(trailing)
        return empty
