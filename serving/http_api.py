"""The HTTP/JSON wire format of the v1 API: routes, body limits, the error shape.

Owns: the FastAPI routes (``/v1/rank``, ``/v1/events``, ``/v1/models``, ``/v1/scenarios``, ``/v1/catalogue``, ``/healthz``,
``/readyz``, ``/metrics``),
reading a body within the size limit, and turning errors into ``{"error": {...}}`` with their
status. The routes are methods of :class:`HttpIngress`, a mixin the Serve deployment inherits.
Must not touch: ranking logic (``serving.service``), Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.errors import (
    InvalidArgumentError,
    MethodNotAllowedError,
    RankserveError,
    RequestTimeoutError,
    RouteNotFoundError,
)
from serving.feedback.events import Event, parse_events
from serving.schemas import RankRequest, check_size, parse_rank_request
from serving.service import RankService

__all__ = ["HttpIngress", "api", "error_response", "read_body"]

api = FastAPI(title="rankserve", version="1", docs_url=None, redoc_url=None)


def error_response(err: RankserveError) -> JSONResponse:
    """The error shape with the error's status and headers (``Retry-After``)."""
    return JSONResponse(err.to_body(), status_code=err.http_status, headers=err.headers())


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and methods answer in the same error shape as everything else."""
    cls = {404: RouteNotFoundError, 405: MethodNotAllowedError}.get(exc.status_code, InvalidArgumentError)
    err = cls(f"{request.method} {request.url.path}: {exc.detail}")
    return JSONResponse(err.to_body(), status_code=exc.status_code)


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` bytes, or when it has
    not all arrived within ``timeout_s`` (a client trickling its body holds no more than that; behind
    the haproxy ingress, HAProxy has already read the whole request).

    Raises:
        PayloadTooLargeError: declared or streamed size over the limit (413).
        RequestTimeoutError: the body did not arrive in time (408).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        check_size(int(declared), limit)

    async def chunks() -> bytes:
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            check_size(size, limit, so_far=True)
            parts.append(chunk)
        return b"".join(parts)

    try:
        return await asyncio.wait_for(chunks(), timeout_s)
    except asyncio.TimeoutError as err:
        raise RequestTimeoutError(f"the request body did not arrive within {timeout_s:g} s", field="body") from err


class HttpIngress:
    """HTTP routes over ``self.service`` (set by the class that inherits this)."""

    service: RankService

    @api.post("/v1/rank")
    async def rank(self, request: Request) -> Response:
        """``POST /v1/rank``."""
        limit, timeout_s = self.service.settings.max_body_bytes, self.service.settings.read_timeout_s

        async def read() -> RankRequest:
            return parse_rank_request(await read_body(request, limit, timeout_s))

        try:
            result = await self.service.rank(read, request.headers.get("authorization"))
        except RankserveError as err:
            return error_response(err)
        return JSONResponse(result.to_json())

    @api.post("/v1/events")
    async def events(self, request: Request) -> Response:
        """``POST /v1/events``: 202 with the number of events accepted (all of the call's, or none)."""
        limit, timeout_s = self.service.settings.max_body_bytes, self.service.settings.read_timeout_s

        async def read() -> list[Event]:
            return parse_events(await read_body(request, limit, timeout_s))

        try:
            accepted = await self.service.post_events(read, request.headers.get("authorization"))
        except RankserveError as err:
            return error_response(err)
        return JSONResponse({"accepted": accepted}, status_code=202)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> Response:
        checks = await self.service.readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    def _admin(self, request: Request, view: Callable[[], Response]) -> Response:
        """An operations view, for a caller with an admin key (auth=keys); else its 401 or 403."""
        try:
            self.service.access.check(request.headers.get("authorization"), "admin")
            return view()
        except RankserveError as err:
            return error_response(err)

    @api.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        return self._admin(request, lambda: Response(self.service.metrics_text(),
                                                     media_type="text/plain; version=0.0.4"))

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        try:
            self.service.access.check(request.headers.get("authorization"), "admin")
        except RankserveError as err:
            return error_response(err)
        return JSONResponse(await self.service.models_view())  # the one view that waits (on Triton)

    @api.get("/v1/scenarios")
    async def scenarios(self, request: Request) -> Response:
        """The scenarios this replica serves, each at its live version, and the versions on disk."""
        return self._admin(request, lambda: JSONResponse(self.service.scenarios_view()))

    @api.get("/v1/catalogue")
    async def catalogue(self, request: Request) -> Response:
        """The catalogue this replica serves: its change version, item count and blocked count."""
        return self._admin(request, lambda: JSONResponse(self.service.catalogue_view()))
