"""Errors that carry their HTTP and gRPC status, and the one table that maps them.

Owns: every exception rankserve raises on purpose, all under one root, :class:`RankserveError`
(settings, Triton start-up and push refusals included, not only the request path). Must not
touch: anything above the bottom layer (this module imports nothing of rankserve). The ingress turns
any of them into ``{"error": {"code", "message", "field"}}`` with the class's HTTP status; the gRPC
servicer uses the same class's gRPC code. ``tests/unit/test_errors.py`` checks both maps agree.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ERROR_TABLE",
    "BackendUnavailableError",
    "BuildCacheError",
    "ConfigError",
    "DeadlineExceededError",
    "FeaturesError",
    "InsufficientResourcesError",
    "IntegrityError",
    "InvalidArgumentError",
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PortInUseError",
    "PushRefusedError",
    "RankserveError",
    "RequestTimeoutError",
    "RouteNotFoundError",
    "ScenarioNotFoundError",
    "ScenarioRefusedError",
    "SchemaError",
    "SetupError",
    "TritonError",
    "TritonStartError",
    "UnauthenticatedError",
    "UnsupportedPythonError",
    "ValidationError",
]


class RankserveError(Exception):
    """Root of rankserve's errors. Subclasses set ``http_status``, ``grpc_code``, ``code`` and
    ``exit_status`` (what the ``rankserve`` command exits with when it stops on this error).

    Args:
        message: one line saying what went wrong.
        field: the request field at fault (request errors).
        retry_after_s: when a client may retry (load shedding).
        hint: one line saying what to do about it (set-up errors; the command prints it).
        details: lines that show the cause, e.g. the tail of a server's log (printed indented).
    """

    http_status: int = 500
    grpc_code: str = "INTERNAL"  # name of a grpc.StatusCode member
    code: str = "internal"
    exit_status: int = 3

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: float | None = None,
                 hint: str | None = None, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return f"{self.message}\n{self.details}" if self.details else self.message

    def to_body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        return {"error": err}

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, int(round(self.retry_after_s))))}


class InvalidArgumentError(RankserveError):
    """Malformed request: bad JSON, wrong types (400)."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    code = "invalid_argument"


class ValidationError(RankserveError):
    """Well-formed but unacceptable values: out of range, unknown items, too many candidates (422)."""

    http_status = 422
    grpc_code = "INVALID_ARGUMENT"
    code = "invalid_argument"


class PayloadTooLargeError(RankserveError):
    """Request body larger than the configured limit (413)."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"
    code = "payload_too_large"


class UnauthenticatedError(RankserveError):
    """No API key, or one that is unknown or revoked (401)."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"
    code = "unauthenticated"


class PermissionDeniedError(RankserveError):
    """A valid API key whose role does not allow the call (403)."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"
    code = "permission_denied"


class RequestTimeoutError(RankserveError):
    """The client did not send its whole request within the read time-out (408)."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"
    code = "request_timeout"


class ModelNotFoundError(RankserveError):
    """The request names a model the server does not serve (404)."""

    http_status = 404
    grpc_code = "NOT_FOUND"
    code = "not_found"


class ScenarioNotFoundError(RankserveError):
    """The request names a scenario the server does not serve (404, field ``scenario``)."""

    http_status = 404
    grpc_code = "NOT_FOUND"
    code = "not_found"


class RouteNotFoundError(RankserveError):
    """No such path on the HTTP API (404)."""

    http_status = 404
    grpc_code = "NOT_FOUND"
    code = "not_found"


class MethodNotAllowedError(RankserveError):
    """The path exists but not for this HTTP method (405)."""

    http_status = 405
    grpc_code = "UNIMPLEMENTED"
    code = "method_not_allowed"


class OverloadedError(RankserveError):
    """Load shedding: the bounded queue is full (503 + Retry-After)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    code = "overloaded"


class BackendUnavailableError(RankserveError):
    """A dependency (Triton, the index) is not ready (503)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    code = "unavailable"


class DeadlineExceededError(RankserveError):
    """The request's deadline passed before an answer was ready (504)."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"
    code = "deadline_exceeded"


class TritonError(RankserveError):
    """Triton answered with an error or could not be reached (wrapped by the ranking stage)."""

    http_status = 502
    grpc_code = "UNAVAILABLE"
    code = "triton_error"


class PushRefusedError(RankserveError):
    """A model push, promote or rollback was refused; the repository is unchanged (422)."""

    http_status = 422
    grpc_code = "FAILED_PRECONDITION"
    code = "push_refused"


class ScenarioRefusedError(RankserveError):
    """A scenario file was refused (validate, apply, rollback); nothing changed (422)."""

    http_status = 422
    grpc_code = "FAILED_PRECONDITION"
    code = "scenario_refused"


class SchemaError(RankserveError):
    """A data set's schema, or a file imported under it, was refused; nothing was written (exit 2)."""

    http_status = 422
    grpc_code = "INVALID_ARGUMENT"
    code = "schema_error"
    exit_status = 2


class FeaturesError(SchemaError):
    """A ranker's feature declaration was refused: an entry in no known form, or a name the data
    set's schema does not hold with the kind the entry needs (exit 2)."""

    code = "features_error"


class ConfigError(RankserveError, ValueError):
    """A setting (from the environment, a flag or a file) is invalid; raised at start-up."""

    http_status = 500
    grpc_code = "INTERNAL"
    code = "config_error"
    exit_status = 2


class PortInUseError(ConfigError):
    """A port rankserve is configured to listen on is taken; the hint names the setting to change."""

    code = "port_in_use"


class SetupError(RankserveError):
    """This machine or its files are not ready to build or serve (exit status 4): the hint says
    what to do. Raised before anything starts, or after what started was stopped."""

    http_status = 500
    grpc_code = "INTERNAL"
    code = "setup_error"
    exit_status = 4


class TritonStartError(SetupError):
    """The embedded Triton exited or did not become ready; ``details`` carries its log's tail."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    code = "triton_start"


class BuildCacheError(SetupError):
    """The build cache (demo data, build summary) is damaged or was written by another version."""

    code = "build_cache"


class IntegrityError(SetupError):
    """A model version's files do not match the digests recorded when it was written (or none were
    recorded): it is not loaded. At start-up a set-up error naming the file (exit status 4)."""

    code = "integrity"


class InsufficientResourcesError(SetupError):
    """Too little free memory or disk for the build at the asked scale."""

    code = "insufficient_resources"


class UnsupportedPythonError(SetupError):
    """The running Python is outside the versions rankserve supports (pyproject ``requires-python``)."""

    code = "unsupported_python"


# One table: exception class -> (HTTP status, gRPC status code name). Built from the classes.
ERROR_TABLE: dict[type[RankserveError], tuple[int, str]] = {
    cls: (cls.http_status, cls.grpc_code)
    for cls in (
        InvalidArgumentError,
        ValidationError,
        PayloadTooLargeError,
        UnauthenticatedError,
        PermissionDeniedError,
        RequestTimeoutError,
        ModelNotFoundError,
        ScenarioNotFoundError,
        RouteNotFoundError,
        MethodNotAllowedError,
        OverloadedError,
        BackendUnavailableError,
        DeadlineExceededError,
        TritonError,
        PushRefusedError,
        ScenarioRefusedError,
        SchemaError,
        FeaturesError,
        ConfigError,
        PortInUseError,
        SetupError,
        TritonStartError,
        BuildCacheError,
        IntegrityError,
        InsufficientResourcesError,
        UnsupportedPythonError,
        RankserveError,
    )
}
