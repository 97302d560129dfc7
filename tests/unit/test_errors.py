"""The error table: HTTP and gRPC statuses agree, and every error carries its status."""

from __future__ import annotations

import grpc

from serving import errors
from serving.errors import ERROR_TABLE, OverloadedError, RankserveError

# The HTTP class a gRPC status must belong to (the usual gRPC <-> HTTP correspondence).
_GRPC_TO_HTTP = {
    "INVALID_ARGUMENT": {400, 422},
    "NOT_FOUND": {404},
    "RESOURCE_EXHAUSTED": {413, 429},
    "UNAVAILABLE": {502, 503},
    "DEADLINE_EXCEEDED": {408, 504},
    "UNAUTHENTICATED": {401},
    "PERMISSION_DENIED": {403},
    "INTERNAL": {500},
    "FAILED_PRECONDITION": {400, 409, 412, 422},
    "UNIMPLEMENTED": {405, 501},
}


def test_every_error_maps_to_agreeing_http_and_grpc_status() -> None:
    assert len(ERROR_TABLE) >= 8
    for cls, (http, grpc_name) in ERROR_TABLE.items():
        assert issubclass(cls, RankserveError)
        assert hasattr(grpc.StatusCode, grpc_name), cls
        assert http in _GRPC_TO_HTTP[grpc_name], (cls, http, grpc_name)


def test_every_error_class_is_in_the_table() -> None:
    """A new error cannot skip the agreement check above: the table lists every class."""
    defined = {obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, RankserveError)}
    assert defined == set(ERROR_TABLE)


def test_client_errors_are_4xx_and_body_shape() -> None:
    for cls in ERROR_TABLE:
        if cls.code in {"invalid_argument", "not_found", "payload_too_large"}:
            assert 400 <= cls.http_status < 500
    body = OverloadedError("busy", retry_after_s=2).to_body()
    assert body == {"error": {"code": "overloaded", "message": "busy"}}
    assert OverloadedError("busy", retry_after_s=2).headers() == {"Retry-After": "2"}
