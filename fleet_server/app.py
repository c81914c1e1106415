"""The FastAPI application: ``create_app(config) -> FastAPI``.

``create_app`` opens the ``ServerContext`` at once (database migrated, keys and TUF repository
created on first start, Mosquitto's password and ACL files written when the server manages
them), so configuration mistakes fail before uvicorn binds a port. The
lifespan then starts the network side (embedded broker if needed, MQTT ingest) and a task that
re-signs the TUF timestamp (and snapshot/targets) before they expire, and stops both on exit.

Also here: the one error shape (``edgefleet.problems``, RFC 9457 ``application/problem+json``)
for every refusal: ``ServerError`` classes mapped to their HTTP statuses, FastAPI's schema
violations (422 with ``errors``), Starlette's own 404/405/413, and a last-resort 500 that names
no internals; the OpenAPI document says so (``fleet_server.openapi``). And a request body limit
enforced while the body streams in (413 before a huge upload is buffered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgefleet import __version__
from edgefleet.errors import EdgefleetError
from edgefleet.problems import MEDIA_TYPE, TYPE_PREFIX, Problem, from_error, title_for
from fleet_server.config import ServerConfig
from fleet_server.context import ServerContext
from fleet_server.errors import AuthError, ServerError
from fleet_server.openapi import install_openapi

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_BODY_LIMIT = 1024 * 1024
MULTIPART_SLACK = 64 * 1024  # room for the multipart envelope around the bundle itself


class BodyLimit:
    """Refuse request bodies over a limit with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, *, upload_limit: int, default_limit: int = JSON_BODY_LIMIT) -> None:
        self.app = app
        self.upload_limit = upload_limit + MULTIPART_SLACK
        self.default_limit = default_limit

    def _limit(self, scope: Scope) -> int:
        path = scope.get("path", "").rstrip("/")
        if scope.get("method") == "POST" and (path == "/api/v1/models" or path.endswith("/predict/batch")):
            return self.upload_limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body is over the {limit}-byte limit")
            return message

        await self.app(scope, limited, send)


class ProblemResponse(JSONResponse):
    """A problem details body (``edgefleet.problems``) with its own media type."""

    media_type = MEDIA_TYPE

    def __init__(self, problem: Problem, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(problem.to_dict(), status_code=problem.status or 500, headers=headers)


async def _too_large(send: Send, limit: int) -> None:
    response = ProblemResponse(Problem(f"request body is over the {limit}-byte limit", status=413,
                                       fix="raise max_upload_bytes in the server config, or upload a smaller bundle",
                                       type=TYPE_PREFIX + "too-large"))
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _error_response(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, EdgefleetError)
    if isinstance(exc, ServerError):
        status = exc.status_code
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return ProblemResponse(from_error(exc, status=status), headers=headers)
    # A trust or storage failure inside the server (disk full, key unreadable): not the caller's fault.
    log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return ProblemResponse(from_error(exc, status=500))


# Where a schema violation was found, as the ``field`` prefix: the location kind says nothing more.
_LOCATIONS = ("body", "path", "query", "header", "cookie")


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _validation_response(request: Request, exc: Exception) -> ProblemResponse:
    """FastAPI's schema violations as one 422 problem: each field and what is wrong, never the input."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field(e.get("loc", ())), "detail": str(e.get("msg", "invalid"))}
              for e in exc.errors()[:20]]  # a body can violate the schema in many places: 20 tell enough
    detail = "; ".join(f"{e['field']}: {e['detail']}" for e in errors[:3]) or "the request does not fit the schema"
    if len(errors) > 3:
        detail += f"; and {len(errors) - 3} more"
    return ProblemResponse(Problem(detail, status=422, type=TYPE_PREFIX + "validation",
                                   fix="see the operation's schema in /openapi.json (or /docs)",
                                   extra={"errors": errors}))


_HTTP_FIXES = {
    404: "check the path; the API is described at /docs",
    405: "check the method; the API is described at /docs",
    413: "send a smaller body (uploads: raise max_upload_bytes in the server config)",
}


def _http_response(request: Request, exc: Exception) -> ProblemResponse:
    """Starlette's own refusals (no such route, wrong method, our 413) in the same shape."""
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else title_for(exc.status_code)
    return ProblemResponse(Problem(detail, status=exc.status_code, fix=_HTTP_FIXES.get(exc.status_code)),
                           headers=exc.headers)


def _unexpected_response(request: Request, exc: Exception) -> ProblemResponse:
    # A bug. The traceback goes to the log; the caller learns nothing about the internals.
    log.error("%s %s failed with an unexpected error", request.method, request.url.path, exc_info=exc)
    return ProblemResponse(Problem("the server failed to handle the request", status=500,
                                   fix="retry; if it keeps failing, report it with the server's log"))


async def _refresh_timestamps(ctx: ServerContext, interval: float) -> None:
    while True:
        try:
            await asyncio.to_thread(ctx.refresh_timestamp)
        except Exception:  # keep trying: a missed refresh is retried long before expiry
            log.exception("re-signing the TUF timestamp failed")
        await asyncio.sleep(interval)


def create_app(config: ServerConfig, *, context: ServerContext | None = None, mqtt: bool = True,
               clock: Callable[[], datetime] | None = None) -> FastAPI:
    """Build the app. ``mqtt=False`` serves the API without any broker (tests, offline registry)."""
    ctx = context or ServerContext.open(config, clock=clock or (lambda: datetime.now(UTC)))
    if mqtt and config.mosquitto_dir is not None:
        # Mosquitto refuses to start without its password and ACL files: write them now, before
        # the server needs the broker (which it then retries until it is up), and so that a
        # directory the server cannot write is one line from the CLI, not a traceback from
        # uvicorn's lifespan (issue 17).
        ctx.devices.sync_broker()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if mqtt:
            await asyncio.to_thread(ctx.start_network)
        refresher = asyncio.create_task(_refresh_timestamps(ctx, config.timestamp_refresh_seconds))
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await asyncio.to_thread(ctx.close)

    from fleet_server.api import api, health, tuf
    from fleet_server.broker.auth_api import router as broker_auth_router
    from fleet_server.console import install_console
    from fleet_server.rollouts.api import router as rollouts_router
    from fleet_server.rollouts.preview import router as rollout_preview_router
    from fleet_server.telemetry.api import metrics_router
    from fleet_server.telemetry.api import router as fleet_router
    from fleet_server.telemetry.history import router as history_router
    from fleet_server.telemetry.metrics import ApiLatency

    app = FastAPI(title="edgefleet fleet server", version=__version__, lifespan=lifespan,
                  description="Model registry (TUF), device enrollment and fleet management. "
                              "Admin calls need `Authorization: Bearer <admin token>`.")
    app.state.ctx = ctx
    app.add_exception_handler(EdgefleetError, _error_response)
    app.add_exception_handler(RequestValidationError, _validation_response)
    app.add_exception_handler(StarletteHTTPException, _http_response)
    app.add_exception_handler(Exception, _unexpected_response)
    app.add_middleware(BodyLimit, upload_limit=config.max_upload_bytes)
    app.add_middleware(ApiLatency, metrics=lambda: getattr(ctx, "metrics", None))
    app.include_router(api)
    app.include_router(broker_auth_router)
    app.include_router(fleet_router)
    app.include_router(metrics_router)
    app.include_router(history_router)
    app.include_router(rollout_preview_router)  # before /rollouts/{rollout_id}, which would take "preview"
    app.include_router(rollouts_router)
    app.include_router(tuf)
    app.include_router(health)
    install_console(app, ctx, config)
    install_openapi(app)
    return app
