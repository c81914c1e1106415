"""The local real-time API: a small asyncio HTTP/1.1 server on loopback TCP and a Unix socket.

    POST /v1/models/{name}/predict   {"inputs": ...} | {"instances": ...} -> predictions
    GET  /v1/models                  what serves, with input specs and counters
    GET  /v1/models/{name}           one of them
    GET  /healthz                    liveness (200 while the process serves)
    POST /v1/feedback                {"request_id", "label", "row"?} or a list of them -> accuracy
    GET  /v1/status                  the daemon's status document (``agent status`` reads it)
    POST /v1/reload                  re-read the active slots from the state directory

Why not FastAPI: a device install must stay small and a prediction must cost little more
than the runtime's own few microseconds. One request head is parsed with ``readuntil``,
bodies need a Content-Length (413 over ``max_body_bytes``, 411 without one), connections are
kept alive, and every error becomes a JSON ``{"error", "fix"}`` with a 4xx/5xx status: no
input can take the server down. Inference runs on the event loop while a model's recent
latency stays under ``inline_budget_ms`` (a thread hop would cost more than the inference)
and in a worker thread when it is slower, so one slow model cannot stall other clients.

It does not own sessions (``agent.serving``), parse model input (``agent.inputs``) or know
about MQTT. It deliberately implements only the subset of HTTP/1.1 local clients use: no
chunked request bodies, no pipelining beyond sequential keep-alive requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

from agent.errors import AgentError, InferenceError, InputError, ModelNotFoundError
from agent.metrics import FeedbackError
from agent.serving import ServingTable

log = logging.getLogger("agent.api")

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_HEAD_BYTES = 32 * 1024
IDLE_TIMEOUT_S = 75.0
_SLOW_BODY_BYTES = 256 * 1024
_DISCARD_LIMIT = 64 * 1024 * 1024
_PREFIX = "/v1/models/"

Handler = Callable[[], dict[str, Any]]
FeedbackHandler = Callable[[list[dict[str, Any]]], dict[str, Any]]
MAX_FEEDBACK_ITEMS = 10_000


class HttpError(Exception):
    """An error answered to the client; never escapes the connection handler."""

    def __init__(self, status: int, message: str, fix: str | None = None, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fix = fix
        self.close = close


def _response(status: int, body: bytes, keep_alive: bool, content_type: str = "application/json") -> bytes:
    reason = HTTPStatus(status).phrase
    connection = "keep-alive" if keep_alive else "close"
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {connection}\r\n\r\n").encode("latin-1") + body


def _json_body(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def _error_body(message: str, fix: str | None) -> bytes:
    document = {"error": message}
    if fix:
        document["fix"] = fix
    return _json_body(document)


class ApiServer:
    """Serves a ``ServingTable`` over HTTP. Start with ``await start(...)``, stop with ``shutdown``."""

    def __init__(self, serving: ServingTable, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 inline_budget_ms: float = 1.0, executor: Executor | None = None,
                 status: Handler | None = None, reload: Handler | None = None,
                 feedback: FeedbackHandler | None = None) -> None:
        self.serving = serving
        self.max_body_bytes = max_body_bytes
        self.inline_budget_ms = inline_budget_ms
        self._executor = executor
        self._status = status
        self._reload = reload
        self._feedback = feedback
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._ewma_ms: dict[str, float] = {}
        self.tcp_address: tuple[str, int] | None = None
        self.socket_path: Path | None = None
        self._draining = False

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, *, host: str | None = "127.0.0.1", port: int = 0,
                    socket_path: str | os.PathLike[str] | None = None) -> None:
        """Listen on ``host:port`` (``host=None`` disables TCP) and/or on a Unix socket."""
        if host is not None:
            try:
                server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD_BYTES)
            except OSError as exc:
                raise AgentError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                 fix="pick another --http-port (0 picks a free one), or stop what uses it") from exc
            self._servers.append(server)
            sockname = server.sockets[0].getsockname()
            self.tcp_address = (str(sockname[0]), int(sockname[1]))
        if socket_path is not None:
            path = Path(socket_path)
            _remove_stale_socket(path)
            try:
                server = await asyncio.start_unix_server(self._serve, str(path), limit=MAX_HEAD_BYTES)
            except OSError as exc:
                # AF_UNIX paths are limited to 107 bytes, so a deep state directory fails here.
                raise AgentError(f"cannot listen on the Unix socket {path}: {exc.strerror or exc}",
                                 fix="use a shorter --state-dir, or run with --no-socket") from exc
            # 0660: the agent's group may predict; other local users may not.
            os.chmod(path, 0o660)
            self._servers.append(server)
            self.socket_path = path

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``timeout``), close connections."""
        self._draining = True
        for server in self._servers:
            server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        for writer in list(self._writers):
            writer.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if isinstance(self._executor, ThreadPoolExecutor):
            self._executor.shutdown(wait=False)

    # -- connections ---------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while not self._draining:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT_S):
                        head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(_response(431, _error_body("request head is too large",
                                                            f"keep headers under {MAX_HEAD_BYTES} bytes"), False))
                    return
                self._begin()
                try:
                    keep_alive = await self._request(head, reader, writer)
                finally:
                    self._end()
                if not keep_alive:
                    return
        except Exception:  # a bug here must cost one connection, never the server
            log.exception("connection handler failed")
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()

    def _begin(self) -> None:
        self._active += 1
        self._idle.clear()

    def _end(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def _request(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        keep_alive = False
        method = path = "?"
        try:
            method, path, keep_alive, length, expect = _parse_head(head)
            if length > self.max_body_bytes:
                # Read and drop a moderately oversized body so the client is reading when the
                # 413 comes, rather than getting a reset mid-upload; a huge one just closes.
                if length <= _DISCARD_LIMIT and not expect:
                    await _discard(reader, length)
                raise HttpError(413, f"request body is {length} bytes, over this agent's limit of {self.max_body_bytes}",
                                "send fewer rows per request, or use `edgefleet agent predict` for files", close=True)
            if expect:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                body = await reader.readexactly(length) if length else b""
            except asyncio.IncompleteReadError:
                return False
            status, document = await self._route(method, path, body)
            try:
                payload = _json_body(document)
            except ValueError as exc:  # NaN/infinity: strict JSON clients could not parse the answer
                raise HttpError(500, "the model produced NaN or infinity for this input",
                                "check the model or roll it back") from exc
        except HttpError as err:
            status, payload = err.status, _error_body(err.message, err.fix)
            keep_alive = keep_alive and not err.close
        except Exception:  # a bug must cost this request a 500, never the connection or the server
            log.exception("%s %s failed", method, path)
            status, payload = 500, _error_body("internal error in the agent", "see the agent's log")
        writer.write(_response(status, payload, keep_alive and not self._draining))
        if writer.transport.get_write_buffer_size() > 65536:
            await writer.drain()
        return keep_alive

    # -- routes --------------------------------------------------------------------------------
    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path.startswith(_PREFIX) and path.endswith("/predict"):
            _allow(method, "POST")
            return 200, await self._predict(path[len(_PREFIX):-len("/predict")], body)
        if path == "/healthz":
            _allow(method, "GET")
            return 200, {"status": "ok", "models": {n: self._version(n) for n in self.serving.names()}}
        if path == "/v1/models":
            _allow(method, "GET")
            return 200, {"models": [self._describe(n) for n in self.serving.names()]}
        if path.startswith(_PREFIX) and "/" not in path[len(_PREFIX):]:
            _allow(method, "GET")
            name = path[len(_PREFIX):]
            if self.serving.get(name) is None:
                raise HttpError(404, f"no model named {name!r} is being served", "GET /v1/models lists them")
            return 200, self._describe(name)
        if path == "/v1/status" and self._status is not None:
            _allow(method, "GET")
            return 200, await self._off_loop(self._status)
        if path == "/v1/feedback" and self._feedback is not None:
            _allow(method, "POST")
            items = _feedback_items(body)
            feedback = self._feedback
            try:
                return 200, await asyncio.get_running_loop().run_in_executor(self._executor, feedback, items)
            except FeedbackError as exc:
                raise HttpError(404, exc.message, exc.fix) from exc
        if path == "/v1/reload" and self._reload is not None:
            _allow(method, "POST")
            return 200, await self._off_loop(self._reload)
        raise HttpError(404, f"no route {path}",
                        "use POST /v1/models/NAME/predict, POST /v1/feedback, GET /v1/models, GET /healthz "
                        "or GET /v1/status")

    async def _off_loop(self, func: Callable[[], Any]) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, func)
        except AgentError as exc:
            raise HttpError(500, exc.message, exc.fix) from exc

    def _version(self, name: str) -> str | None:
        session = self.serving.get(name)
        return session.manifest.version if session else None

    def _describe(self, name: str) -> dict[str, Any]:
        session = self.serving.get(name)
        if session is None:
            return {"name": name, "serving": False}
        m = session.manifest
        stats = self.serving.stats(name)
        spec = m.input
        return {"name": name, "version": m.version, "sha256": session.slot.sha256, "format": m.format,
                "task": m.task, "runtime": session.runtime, "providers": list(session.providers),
                "input": {"name": spec.name, "shape": list(spec.shape), "feature_names":
                          list(spec.feature_names) if spec.feature_names else None, "allow_nan": spec.allow_nan},
                "class_labels": list(m.class_labels) if m.class_labels else None,
                "requests": stats.requests, "errors": stats.errors, "input_errors": stats.input_errors,
                "latency_ms_p50": stats.percentile(50), "latency_ms_p99": stats.percentile(99)}

    async def _predict(self, name: str, body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            self.serving.reject(name, "input")  # a bad request is an input error of the model asked
            raise HttpError(400, f"request body is not valid JSON ({exc})",
                            'send {"inputs": [[...], ...]} with Content-Type: application/json') from exc
        try:
            if self._ewma_ms.get(name, 0.0) <= self.inline_budget_ms and len(body) < _SLOW_BODY_BYTES:
                result = self.serving.predict(name, payload)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._executor, self.serving.predict, name, payload)
        except InputError as exc:
            raise HttpError(exc.status, exc.message, exc.fix) from exc
        except ModelNotFoundError as exc:
            raise HttpError(404, exc.message, exc.fix) from exc
        except InferenceError as exc:
            raise HttpError(500, exc.message, exc.fix) from exc
        previous = self._ewma_ms.get(name, result.latency_ms)
        self._ewma_ms[name] = 0.8 * previous + 0.2 * result.latency_ms
        return result.to_dict()


async def _discard(reader: asyncio.StreamReader, length: int) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while length > 0:
            chunk = await reader.read(min(length, 1 << 16))
            if not chunk:
                return
            length -= len(chunk)


_FEEDBACK_FIX = ('send {"request_id": "<from the predict response>", "label": <true label>, "row": <index, '
                 'default 0>} or a list of such objects')


def _feedback_items(body: bytes) -> list[dict[str, Any]]:
    """The checked items of a feedback body: one object or a list of them."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise HttpError(400, f"feedback body is not valid JSON ({exc})", _FEEDBACK_FIX) from exc
    items = document if isinstance(document, list) else [document]
    if not items or len(items) > MAX_FEEDBACK_ITEMS:
        raise HttpError(400, f"feedback needs 1 to {MAX_FEEDBACK_ITEMS} items, got {len(items)}", _FEEDBACK_FIX)
    for i, item in enumerate(items):
        where = f"feedback item {i}" if isinstance(document, list) else "feedback"
        if not isinstance(item, dict):
            raise HttpError(400, f"{where} is not an object", _FEEDBACK_FIX)
        unknown = set(item) - {"request_id", "label", "row"}
        if unknown:
            raise HttpError(400, f"{where} has unknown keys {sorted(unknown)}", _FEEDBACK_FIX)
        if not isinstance(item.get("request_id"), str) or not item["request_id"]:
            raise HttpError(400, f"{where} needs a request_id string", _FEEDBACK_FIX)
        label = item.get("label")
        if label is None or isinstance(label, (dict, list)):
            raise HttpError(400, f"{where} needs a label (a class name or number), got {label!r}", _FEEDBACK_FIX)
        row = item.get("row", 0)
        if isinstance(row, bool) or not isinstance(row, int) or row < 0:
            raise HttpError(400, f"{where}: row must be a non-negative integer, got {row!r}", _FEEDBACK_FIX)
    return items


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"method {method} is not allowed here", f"use {allowed}")


def _parse_head(head: bytes) -> tuple[str, str, bool, int, bool]:
    """(method, path, keep_alive, content_length, expects_100_continue) of a request head."""
    try:
        text = head.decode("latin-1")
        request_line, *lines = text[:-4].split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError as exc:
        raise HttpError(400, "malformed HTTP request line", close=True) from exc
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, f"{version} is not supported", "use HTTP/1.1", close=True)
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, f"malformed header line {line[:40]!r}", close=True)
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise HttpError(411, "chunked request bodies are not supported", "send a Content-Length header", close=True)
    try:
        length = int(headers.get("content-length", "0"))
        if length < 0:
            raise ValueError(length)
    except ValueError as exc:
        raise HttpError(400, "Content-Length is not a non-negative integer", close=True) from exc
    path = target.split("?", 1)[0]
    return method, path, keep_alive, length, headers.get("expect", "").lower() == "100-continue"


def _remove_stale_socket(path: Path) -> None:
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: left behind by a crash
        return
    finally:
        probe.close()
    raise AgentError(f"another process is already serving on {path}",
                     fix="stop the other agent (systemctl stop edgefleet-agent) or use another --state-dir")
