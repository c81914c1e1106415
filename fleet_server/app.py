"""The FastAPI application: ``create_app(config) -> FastAPI``.

``create_app`` opens the ``ServerContext`` at once (database migrated, keys and TUF repository
created on first start), so configuration mistakes fail before uvicorn binds a port. The
lifespan then starts the network side (embedded broker if needed, MQTT ingest) and a task that
re-signs the TUF timestamp (and snapshot/targets) before they expire, and stops both on exit.

Also here: the mapping from ``ServerError`` classes to HTTP statuses, and a request body limit
enforced while the body streams in (413 before a huge upload is buffered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from edgefleet import __version__
from edgefleet.errors import EdgefleetError
from fleet_server.config import ServerConfig
from fleet_server.context import ServerContext
from fleet_server.errors import AuthError, ServerError

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


async def _too_large(send: Send, limit: int) -> None:
    response = JSONResponse({"detail": f"request body is over the {limit}-byte limit",
                             "fix": "raise max_upload_bytes in the server config, or upload a smaller bundle"},
                            status_code=413)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _error_response(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ServerError):
        status = exc.status_code
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": exc.message, "fix": exc.fix}, status_code=status, headers=headers)
    assert isinstance(exc, EdgefleetError)
    # A trust or storage failure inside the server (disk full, key unreadable): not the caller's fault.
    log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": exc.message, "fix": exc.fix}, status_code=500)


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
    from fleet_server.rollouts.api import router as rollouts_router
    from fleet_server.telemetry.api import metrics_router
    from fleet_server.telemetry.api import router as fleet_router
    from fleet_server.telemetry.metrics import ApiLatency

    app = FastAPI(title="edgefleet fleet server", version=__version__, lifespan=lifespan,
                  description="Model registry (TUF), device enrollment and fleet management. "
                              "Admin calls need `Authorization: Bearer <admin token>`.")
    app.state.ctx = ctx
    app.add_exception_handler(EdgefleetError, _error_response)
    app.add_middleware(BodyLimit, upload_limit=config.max_upload_bytes)
    app.add_middleware(ApiLatency, metrics=lambda: getattr(ctx, "metrics", None))
    app.include_router(api)
    app.include_router(fleet_router)
    app.include_router(metrics_router)
    app.include_router(rollouts_router)
    app.include_router(tuf)
    app.include_router(health)
    return app
