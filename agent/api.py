"""The local real-time API: a small asyncio HTTP/1.1 server on loopback TCP and a Unix socket.

    POST /v1/models/{name}/predict   {"inputs": ...} | {"instances": ...} | .npy/.npz/raw tensor -> predictions
    GET  /v1/models                  what serves, with input specs and counters
    GET  /v1/models/{name}           one of them
    GET  /healthz                    liveness (200 while the process serves)
    POST /v1/feedback                {"request_id", "label", "row"?} or a list of them -> accuracy
    GET  /v1/status                  the daemon's status document (``agent status`` reads it)
    GET  /metrics                    Prometheus text format (``agent.prometheus``)
    POST /v1/reload                  re-read the active slots from the state directory

Why not FastAPI: a device install must stay small and a prediction must cost little more
than the runtime's own few microseconds. Each connection is an ``asyncio.Protocol`` (no
streams: their futures and buffer copies cost more than the parsing), bodies need a
Content-Length (413 over ``max_body_bytes``, 411 without one), connections are kept alive,
and every error becomes an RFC 9457 problem (``application/problem+json``: ``type``, ``title``,
``status``, ``detail``, ``fix``; ``edgefleet.problems``) with a 4xx status, or 5xx for the
agent's own faults: no input can take the server down.

The request head is read strictly (RFC 9112), because a lenient parser and a strict proxy in
front of it disagreeing on where a request ends is how requests are smuggled: Content-Length is
ASCII digits only (``int()`` would also take ``1_0``, ``+10``, `` 10``), given once, and never
beside Transfer-Encoding; header names are tokens with no space before the colon; no folded
lines or control characters; the target is origin-form (or absolute-form). A connection that
ends inside a request is answered 400. Text a client sent (paths, model names) is echoed
shortened, never whole.

A prediction whose model's recent CPU cost per call (``time.thread_time``, not wall time,
which preemption inflates on a busy device) stays under ``inline_budget_ms`` is answered
inside the ``data_received`` callback, head and body in one ``transport.write`` (a thread hop
or a task would cost more than the inference); a costlier one, and every other route that may
block, runs as a task (in a worker thread where it blocks), so one slow model cannot stall
other clients. Inline predictions that arrive together (read in the same loop iteration) are
micro-batched (``agent.batcher``): one runtime run for all their rows, answered behind the
callbacks ready now; a lone request runs at once, as it would without batching.

It does not own sessions (``agent.serving``), parse model input (``edgefleet.inputs``) or know
about MQTT. It deliberately implements only the subset of HTTP/1.1 local clients use: no
chunked request bodies, and pipelined requests are answered one after another, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

from agent.batcher import Decision, MicroBatcher, loop_others_ready
from agent.errors import AgentError, InferenceError, ModelNotFoundError
from agent.metrics import FeedbackConflictError, FeedbackError
from agent.serving import PredictionResult, ServingTable
from edgefleet.errors import EdgefleetError, InputError
from edgefleet.inputs import DTYPE_HEADER, SHAPE_HEADER, Body, is_json
from edgefleet.problems import MEDIA_TYPE, Problem, from_error

log = logging.getLogger("agent.api")

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_HEAD_BYTES = 32 * 1024
IDLE_TIMEOUT_S = 75.0
_DECODED_OFF_LOOP = ("image/", "multipart/")
_SLOW_BODY_BYTES = 256 * 1024
_DISCARD_LIMIT = 64 * 1024 * 1024
_PREFIX = "/v1/models/"
_SUFFIX = "/predict"

Handler = Callable[[], dict[str, Any]]
Reply = Callable[[int, bytes, bool], None]  # (status, body, close) of a request answered later
FeedbackHandler = Callable[[list[dict[str, Any]]], dict[str, Any]]
MAX_FEEDBACK_ITEMS = 10_000
MAX_DETAIL = 1024
MAX_REQUEST_ID = 128  # the agent's own are 32 hex characters
_MAX_NAME = 64  # model names are at most 64 characters (edgefleet.version)


class HttpError(Exception):
    """An error answered to the client as a problem document; never escapes the connection handler."""

    def __init__(self, status: int, message: str, fix: str | None = None, *, close: bool = False,
                 problem: Problem | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fix = fix
        self.close = close
        self.problem = problem or Problem(detail=message, status=status, fix=fix)

    @classmethod
    def of(cls, exc: EdgefleetError, status: int) -> HttpError:
        """An edgefleet error as an answer: its type, message, fix and ``field`` go to the client.

        A message longer than ``MAX_DETAIL`` is cut: messages may quote the request (a feature
        name, a value), and an answer must not grow with what the client sent.
        """
        problem = from_error(exc, status=status)
        if len(problem.detail) > MAX_DETAIL:
            problem = replace(problem, detail=f"{problem.detail[:MAX_DETAIL]}... (cut at {MAX_DETAIL} characters)")
        return cls(status, problem.detail, exc.fix, problem=problem)


def shown(text: str, limit: int = 64) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters: a client's own bytes
    are never echoed whole (a 30 kB path must not come back in a 30 kB answer)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


# Response heads up to the Content-Length value, built once per status: most answers are 200.
_HEADS: dict[int, bytes] = {}


class MediaBody(bytes):
    """An answer body that is not JSON (``/metrics``): its bytes, and its ``media`` type."""

    media: str

    @classmethod
    def of(cls, body: bytes, media: str) -> MediaBody:
        typed = cls(body)
        typed.media = media
        return typed


MetricsHandler = Callable[[], MediaBody]


def _response(status: int, body: bytes, keep_alive: bool) -> bytes:
    head: bytes | None
    if type(body) is MediaBody:  # rare (a scrape): the JSON answers keep their prebuilt heads
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {body.media}\r\n"
                "Content-Length: ").encode("latin-1")
    else:
        head = _HEADS.get(status)
    if head is None:
        media = MEDIA_TYPE if status >= 400 else "application/json"
        head = _HEADS[status] = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                                 f"Content-Type: {media}\r\nContent-Length: ").encode("latin-1")
    tail = b"\r\nConnection: keep-alive\r\n\r\n" if keep_alive else b"\r\nConnection: close\r\n\r\n"
    return b"".join((head, str(len(body)).encode(), tail, body))


# One encoder for every answer: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

try:  # orjson (edgefleet[agent], 0.4 MB, about +2 MB RSS) encodes an answer 25x faster, decodes 10x
    import orjson

    _fast_dumps: Callable[[Any], bytes] | None = orjson.dumps
    _fast_loads: Callable[[bytes], Any] | None = orjson.loads
except ImportError:  # the standard library alone gives the same answers, slower
    _fast_dumps = _fast_loads = None


def _json_body(document: Any) -> bytes:
    if _fast_dumps is not None:
        try:
            out = _fast_dumps(document)
        except TypeError:  # what orjson does not take (integers over 64 bits): the standard encoder
            pass
        else:
            # orjson writes NaN and infinity as null; the standard encoder refuses them, and a
            # document with a null in it is re-encoded so that NaN is still refused (a 500).
            if b"null" not in out:
                return out
    return _ENCODER.encode(document).encode()


def _loads(body: bytes) -> Any:
    """A JSON body: orjson first; whatever it refuses (NaN literals, UTF-16, huge integers, deep
    nesting) goes to ``json.loads``, so accepting and refusing stay the standard library's."""
    if _fast_loads is not None:
        try:
            return _fast_loads(body)
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            pass
    return json.loads(body)


def _error_body(error: HttpError) -> bytes:
    return error.problem.render()


_NAN_ERROR = ("the model produced NaN or infinity for this input", "check the model or roll it back")


def _encode(document: Any) -> bytes:
    """A route's answer as JSON bytes (a prediction's comes already encoded)."""
    if isinstance(document, bytes):
        return document
    try:
        return _json_body(document)
    except ValueError as exc:  # NaN/infinity: strict JSON clients could not parse the answer
        raise HttpError(500, *_NAN_ERROR) from exc


def _predict_error(exc: EdgefleetError, name: str) -> HttpError:
    """The serving table's error as the HTTP answer it deserves (a plain function, not a context
    manager: this sits on every prediction's path)."""
    if isinstance(exc, InputError):
        return HttpError.of(exc, exc.status)
    if isinstance(exc, ModelNotFoundError):
        if len(name) > _MAX_NAME:  # no model has such a name: do not echo it
            return HttpError(404, f"no model named {shown(name)} is being served", exc.fix)
        return HttpError.of(exc, 404)
    return HttpError.of(exc, 500)


_INTERNAL = HttpError(500, "internal error in the agent", "see the agent's log")


def _failure(exc: Exception, method: str, path: str) -> tuple[int, bytes, bool]:
    """(status, body, close) for what a request raised."""
    if isinstance(exc, HttpError):
        return exc.status, _error_body(exc), exc.close
    # A bug must cost this request a 500, never the connection or the server.
    log.error("%s %s failed", method, path[:200], exc_info=exc)
    return 500, _error_body(_INTERNAL), False


class ApiServer:
    """Serves a ``ServingTable`` over HTTP. Start with ``await start(...)``, stop with ``shutdown``."""

    def __init__(self, serving: ServingTable, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 inline_budget_ms: float = 1.0, executor: Executor | None = None,
                 status: Handler | None = None, reload: Handler | None = None,
                 feedback: FeedbackHandler | None = None, metrics: MetricsHandler | None = None,
                 batching: bool = True) -> None:
        self.serving = serving
        self.batching = batching
        self._batcher: MicroBatcher[Any, PredictionResult | Exception] | None = None
        self.max_body_bytes = max_body_bytes
        self.inline_budget_ms = inline_budget_ms
        self._executor = executor
        self._status = status
        self._reload = reload
        self._feedback = feedback
        self._metrics = metrics
        self._servers: list[asyncio.base_events.Server] = []
        self._connections: set[_Connection] = set()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._ewma_ms: dict[str, float] = {}
        self.tcp_address: tuple[str, int] | None = None
        self.socket_path: Path | None = None
        self._socket_alias: Path | None = None
        self._draining = False

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, *, host: str | None = "127.0.0.1", port: int = 0,
                    socket_path: str | os.PathLike[str] | None = None,
                    socket_alias: str | os.PathLike[str] | None = None) -> None:
        """Listen on ``host:port`` (``host=None`` disables TCP) and/or on a Unix socket.

        The socket is made 0660 with its directory's group, so that group may call the API and
        other local users may not; the directory is made (0750) if missing. ``socket_alias``, if
        given, becomes a symlink to the socket (the state directory's ``agent.sock``, where the
        CLI looks when the socket lives in a runtime directory).
        """
        loop = asyncio.get_running_loop()
        if self.batching and self._batcher is None:
            self._batcher = MicroBatcher(self.serving.predict_many, others_ready=loop_others_ready(loop),
                                         schedule=loop.call_soon)
        if host is not None:
            try:
                # asyncio sets TCP_NODELAY on every accepted TCP connection itself.
                server = await loop.create_server(lambda: _Connection(self), host, port)
            except OSError as exc:
                raise AgentError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                 fix="pick another --http-port (0 picks a free one), or stop what uses it") from exc
            self._servers.append(server)
            sockname = server.sockets[0].getsockname()
            self.tcp_address = (str(sockname[0]), int(sockname[1]))
        if socket_path is not None:
            path = Path(socket_path)
            _socket_dir(path.parent)
            _remove_stale_socket(path)
            try:
                server = await loop.create_unix_server(lambda: _Connection(self), str(path))
            except OSError as exc:
                # AF_UNIX paths are limited to 107 bytes, so a deep state directory fails here.
                raise AgentError(f"cannot listen on the Unix socket {path}: {exc.strerror or exc}",
                                 fix="use a shorter --state-dir or --socket-dir, or run with --no-socket") from exc
            self._servers.append(server)
            self.socket_path = path
            _share_with_group(path)
            if socket_alias is not None and Path(socket_alias) != path:
                self._socket_alias = _link(Path(socket_alias), path)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``timeout``), close connections."""
        self._draining = True
        for server in self._servers:
            server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        for connection in list(self._connections):
            connection.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if self._socket_alias is not None and self.socket_path is not None:
            # Only our own link: another agent may have taken the name over since.
            with contextlib.suppress(OSError):
                if os.readlink(self._socket_alias) == str(self.socket_path.absolute()):
                    self._socket_alias.unlink()
        if isinstance(self._executor, ThreadPoolExecutor):
            self._executor.shutdown(wait=False)

    # -- requests --------------------------------------------------------------------------------
    def _answer_now(self, method: str, path: str, body: bytes, media: dict[str, str] | None = None,
                    reply: Reply | None = None) -> tuple[int, bytes, bool] | bool | None:
        """(status, body, close) of a prediction that runs inline, None for ``_answer``, or
        True when it joined a micro-batch: ``reply`` is then called with its answer."""
        if method != "POST" or not path.startswith(_PREFIX) or not path.endswith(_SUFFIX):
            return None
        name = path[len(_PREFIX):-len(_SUFFIX)]
        if not self._inline(name, body, media):
            return None
        try:
            payload = self._decode(name, body, media)
            if reply is not None and self._batcher is not None:
                def deliver(outcome: PredictionResult | Exception) -> None:
                    reply(*self._batched(name, outcome, method, path))
                if self._batcher.submit(name, payload, deliver, _rows(payload)) is not Decision.ALONE:
                    return True
            cpu = time.thread_time()
            result = self._run_predict(name, payload)
            self._cost(name, time.thread_time() - cpu)
            return 200, self._predicted(name, result), False
        except Exception as exc:
            return _failure(exc, method, path)

    def _batched(self, name: str, outcome: PredictionResult | Exception, method: str,
                 path: str) -> tuple[int, bytes, bool]:
        """The answer of one request of a micro-batch."""
        try:
            if isinstance(outcome, (InputError, ModelNotFoundError, InferenceError)):
                raise _predict_error(outcome, name) from outcome
            if isinstance(outcome, Exception):
                raise outcome
            return 200, self._predicted(name, outcome), False
        except Exception as exc:
            return _failure(exc, method, path)

    async def _answer(self, method: str, path: str, body: bytes,
                      media: dict[str, str] | None = None) -> tuple[int, bytes, bool]:
        """(status, body, close) of any request, on the loop or off it as the route needs."""
        try:
            status, document = await self._route(method, path, body, media)
            return status, _encode(document), False
        except Exception as exc:
            return _failure(exc, method, path)

    # A request is in flight (``shutdown`` waits for it) from its head to its answer, but only
    # one that spans callbacks is counted: one answered within a single callback cannot be seen
    # half done by ``shutdown``, which runs on the same loop, and counting it costs every request.
    def _begin(self) -> None:
        self._active += 1
        self._idle.clear()

    def _end(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()


    async def _route(self, method: str, path: str, body: bytes, media: dict[str, str] | None = None) -> tuple[int, Any]:
        if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
            _allow(method, "POST")
            return 200, await self._predict(path[len(_PREFIX):-len(_SUFFIX)], body, media)
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
                raise HttpError(404, f"no model named {shown(name)} is being served", "GET /v1/models lists them")
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
            except FeedbackConflictError as exc:
                raise HttpError.of(exc, 409) from exc
            except FeedbackError as exc:
                raise HttpError.of(exc, 404) from exc
        if path == "/v1/reload" and self._reload is not None:
            _allow(method, "POST")
            return 200, await self._off_loop(self._reload)
        if path == "/metrics" and self._metrics is not None:
            _allow(method, "GET")
            return 200, await self._off_loop(self._metrics)  # drift scores are numpy work: off the loop
        raise HttpError(404, f"no route {shown(path)}",
                        "use POST /v1/models/NAME/predict, POST /v1/feedback, GET /v1/models, GET /healthz, "
                        "GET /v1/status or GET /metrics")

    async def _off_loop(self, func: Callable[[], Any]) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, func)
        except AgentError as exc:
            raise HttpError.of(exc, 500) from exc

    def _version(self, name: str) -> str | None:
        session = self.serving.get(name)
        return session.manifest.version if session else None

    def _describe(self, name: str) -> dict[str, Any]:
        session = self.serving.get(name)
        if session is None:
            return {"name": name, "serving": False}
        m = session.manifest
        stats = self.serving.stats(name)
        # A model with several named inputs (columns) lists them under "inputs", with "input" null.
        spec = m.inputs[0] if len(m.inputs) == 1 else None
        described: dict[str, Any] = {"input": None, "inputs": [s.to_dict() for s in m.inputs]} if spec is None else {
            "input": {"name": spec.name, "shape": list(spec.shape), "feature_names":
                      list(spec.feature_names) if spec.feature_names else None, "allow_nan": spec.allow_nan}}
        return {"name": name, "version": m.version, "sha256": session.slot.sha256, "format": m.format,
                "task": m.task, "runtime": session.runtime, "providers": list(session.providers),
                **described,
                "class_labels": list(m.class_labels) if m.class_labels else None,
                "requests": stats.requests, "errors": stats.errors, "input_errors": stats.input_errors,
                "latency_ms_p50": stats.percentile(50), "latency_ms_p99": stats.percentile(99)}

    # -- prediction ------------------------------------------------------------------------------
    def _inline(self, name: str, body: bytes, media: dict[str, str] | None = None) -> bool:
        if media is not None and media.get("content-type", "").lstrip().lower().startswith(_DECODED_OFF_LOOP):
            # Decoding a picture (zlib, JPEG) releases the GIL: on worker threads several run at
            # once, while inline they queue behind each other on the one loop thread.
            return False
        return self._ewma_ms.get(name, 0.0) <= self.inline_budget_ms and len(body) < _SLOW_BODY_BYTES

    def _cost(self, name: str, cpu_s: float) -> None:
        """Fold one call's CPU seconds (``time.thread_time``: this thread's, so time spent
        preempted does not count) into the model's average that decides inline or executor."""
        ms = cpu_s * 1000.0
        previous = self._ewma_ms.get(name, ms)
        self._ewma_ms[name] = 0.8 * previous + 0.2 * ms

    def _decode(self, name: str, body: bytes, media: dict[str, str] | None = None) -> Any:
        content_type = (media or {}).get("content-type")
        if content_type is not None and not is_json(content_type.partition(";")[0].strip().lower()):
            # A binary tensor body (.npy, .npz, raw): the shared parser reads it against the model's inputs.
            return Body.from_headers(body, content_type, media)
        try:
            return _loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the stack
            self.serving.reject(name, "input")  # a bad request is an input error of the model asked
            raise HttpError.of(InputError(f"request body is not valid JSON ({exc})",
                                          fix='send {"inputs": [[...], ...]} with Content-Type: application/json'),
                               400) from exc

    def _run_predict(self, name: str, payload: Any) -> PredictionResult:
        try:
            return self.serving.predict(name, payload)
        except (InputError, ModelNotFoundError, InferenceError) as exc:
            raise _predict_error(exc, name) from exc

    def _predicted(self, name: str, result: PredictionResult) -> bytes:
        return _encode(result.to_dict())

    def _timed_predict(self, name: str, payload: Any) -> PredictionResult:
        """``serving.predict`` in a worker thread, its CPU cost measured on that thread."""
        cpu = time.thread_time()
        try:
            return self.serving.predict(name, payload)
        finally:
            self._cost(name, time.thread_time() - cpu)

    async def _predict(self, name: str, body: bytes, media: dict[str, str] | None = None) -> bytes:
        payload = self._decode(name, body, media)
        if self._inline(name, body, media):  # the budget may have changed since _answer_now declined
            cpu = time.thread_time()
            result = self._run_predict(name, payload)
            self._cost(name, time.thread_time() - cpu)
            return self._predicted(name, result)
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, self._timed_predict, name, payload)
        except (InputError, ModelNotFoundError, InferenceError) as exc:
            raise _predict_error(exc, name) from exc
        return self._predicted(name, result)


class _Connection(asyncio.Protocol):
    """One client connection: bytes in, requests parsed in order, one write per answer.

    A request is answered inside ``data_received`` when it can be (``_answer_now``);
    otherwise it runs as a task and the connection holds later bytes until it is answered,
    so pipelined answers keep their order.
    """

    def __init__(self, server: ApiServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        # The parsed head of the request whose body is awaited: (method, path, keep_alive, length).
        self._head: tuple[str, str, bool, int, dict[str, str]] | None = None
        self._discard = 0  # bytes of an oversized body still to drop before the 413
        self._busy = False  # a request runs as a task or waits in a micro-batch
        self._answering = False  # inside _answer_now: a micro-batch's answer is kept in _early
        self._early: tuple[int, bytes, bool] | None = None
        self._counted = False  # this connection's request in flight is counted by the server
        self._write_paused = False
        self._eof = False
        self._closed = False
        self._last_active = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._connections.add(self)
        self._idle_timer = self._loop.call_later(IDLE_TIMEOUT_S, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._uncount()
        self._server._connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()

    def data_received(self, data: bytes) -> None:
        self._last_active = self._loop.time()
        self._buffer += data
        if not self._busy and not self._write_paused:
            self._process()
        elif len(self._buffer) > MAX_HEAD_BYTES + self._server.max_body_bytes and self._transport is not None:
            self._transport.pause_reading()  # a client racing ahead of its answers waits for them

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._busy:
            self._process()
        if self._eof and not self._busy and not self._write_paused:
            self._end_of_input()

    def eof_received(self) -> bool | None:
        # Keep the transport open: a client that half-closes after its request still gets the answer.
        self._eof = True
        if not self._busy:
            self._process()
        if not self._busy and not self._write_paused:
            self._end_of_input()
        return True

    def _end_of_input(self) -> None:
        """The client sent its last byte and every whole request is answered: answer a request it
        left unfinished (a client must learn that its request was not taken), then close."""
        if self._closed:
            return
        if self._discard:
            self._discard = 0
            self._refuse_oversized()
        elif self._head is not None:
            length = self._head[3]
            self._head = None
            self._send(400, _error_body(HttpError(
                400, f"the connection ended after {len(self._buffer)} of the {length} body bytes its "
                "Content-Length announced", "send the whole body, or a Content-Length that matches it")), False)
        elif self._buffer.strip(b"\r\n"):
            self._send(400, _error_body(_CUT_HEAD), False)
        self.close()

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()

    def _check_idle(self) -> None:
        # One timer per connection, re-armed here, instead of a timer per request.
        idle = self._loop.time() - self._last_active
        if idle >= IDLE_TIMEOUT_S and not self._busy:
            self.close()
        elif not self._closed:
            self._idle_timer = self._loop.call_later(max(IDLE_TIMEOUT_S - idle, 1.0), self._check_idle)

    # -- requests ----------------------------------------------------------------------------------
    def _process(self) -> None:
        """Answer every complete request in the buffer, stopping at one that runs as a task."""
        try:
            while not self._closed and not self._busy and not self._write_paused:
                if not self._step():
                    return
        except Exception:  # a bug here must cost one connection, never the server
            log.exception("connection handler failed")
            self.close()

    def _step(self) -> bool:
        """Advance by one request (or part of one); False when more bytes are needed."""
        server = self._server
        if self._discard:
            dropped = min(self._discard, len(self._buffer))
            del self._buffer[:dropped]
            self._discard -= dropped
            if self._discard:
                self._count()
                return False
            self._refuse_oversized()
            return False
        if self._head is None:
            # RFC 9112 2.2: empty lines before a request line are ignored (some clients send a
            # CRLF after a POST body).
            while self._buffer[:2] == b"\r\n":
                del self._buffer[:2]
            end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._send(431, _error_body(_HEAD_TOO_LARGE), False)
                return False
            head = bytes(self._buffer[: end + 4])
            del self._buffer[: end + 4]
            try:
                method, path, keep_alive, length, expect, media = _head_of(head)
            except HttpError as err:
                self._send(err.status, _error_body(err), False)
                return False
            self._head = (method, path, keep_alive, length, media)
            if length > server.max_body_bytes:
                # Read and drop a moderately oversized body so the client is reading when the
                # 413 comes, rather than getting a reset mid-upload; a huge one just closes.
                if length <= _DISCARD_LIMIT and not expect:
                    self._discard = length
                    return True
                self._refuse_oversized()
                return False
            if expect and self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        method, path, keep_alive, length, media = self._head
        if len(self._buffer) < length:
            self._count()  # head read, body pending: shutdown waits for this request
            return False
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._head = None
        self._answering, self._early = True, None
        try:
            answer = server._answer_now(method, path, body, media, lambda status, payload, close: self._reply(status, payload, close, keep_alive))
        finally:
            self._answering = False
        if answer is True and self._early is not None:
            answer = self._early  # its batch ran before _answer_now returned (it filled up)
        if answer is True:  # joined a micro-batch: _reply answers it when the batch has run
            self._busy = True
            self._count()
            return False
        if isinstance(answer, tuple):
            status, payload, close = answer
            return self._send(status, payload, keep_alive and not close)
        self._busy = True
        self._count()
        task = self._loop.create_task(server._answer(method, path, body, media))
        task.add_done_callback(lambda done: self._answered(done, keep_alive))
        return False

    def _answered(self, task: asyncio.Task[tuple[int, bytes, bool]], keep_alive: bool) -> None:
        if task.cancelled():
            self._busy = False
            self.close()
            return
        self._finish(*task.result(), keep_alive)  # _answer turns every exception into an answer

    def _reply(self, status: int, payload: bytes, close: bool, keep_alive: bool) -> None:
        """The answer of a micro-batched request: kept for ``_step`` when its batch ran inside
        this very request's callback, else sent now."""
        if self._answering:
            self._early = (status, payload, close)
        else:
            self._finish(status, payload, close, keep_alive)

    def _finish(self, status: int, payload: bytes, close: bool, keep_alive: bool) -> None:
        """Send the answer of the request that ran off this callback, then go on with the buffer."""
        self._busy = False
        if self._send(status, payload, keep_alive and not close):
            if self._transport is not None and not self._closed:
                self._transport.resume_reading()
            self._process()
            if self._eof and not self._busy and not self._write_paused:
                self._end_of_input()

    def _refuse_oversized(self) -> None:
        assert self._head is not None
        length = self._head[3]
        self._head = None
        self._send(413, _error_body(HttpError(
            413, f"request body is {length} bytes, over this agent's limit of {self._server.max_body_bytes}",
            "send fewer rows per request, or use `edgefleet agent predict` for files")), False)

    def _count(self) -> None:
        if not self._counted:
            self._counted = True
            self._server._begin()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._server._end()

    def _send(self, status: int, payload: bytes, keep_alive: bool) -> bool:
        """Write one answer; close after it unless kept alive. True while the connection goes on."""
        self._uncount()
        keep_alive = keep_alive and not self._server._draining
        if self._transport is None or self._closed:
            return False
        self._transport.write(_response(status, payload, keep_alive))
        if not keep_alive:
            self.close()
        return keep_alive



_FEEDBACK_FIX = ('send {"request_id": "<from the predict response>", "label": <true label>, "row": <index, '
                 'default 0>} or a list of such objects')


def _rows(payload: Any) -> int:
    """How many rows a decoded JSON body carries, cheaply (1 when it is not a list of rows): a
    batch is bounded by rows."""
    if isinstance(payload, dict):
        payload = payload.get("inputs", payload.get("instances"))
    if isinstance(payload, list) and payload and isinstance(payload[0], list):
        return len(payload)
    return 1


def _feedback_items(body: bytes) -> list[dict[str, Any]]:
    """The checked items of a feedback body: one object or a list of them."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the stack
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
            raise HttpError(400, f"{where} has unknown keys {shown(', '.join(sorted(unknown)))}", _FEEDBACK_FIX)
        request_id = item.get("request_id")
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
            raise HttpError(400, f"{where} needs a request_id string of 1 to {MAX_REQUEST_ID} characters",
                            _FEEDBACK_FIX)
        label = item.get("label")
        if label is None or isinstance(label, (dict, list)):
            kind = "null" if label is None else "an object" if isinstance(label, dict) else "a list"
            raise HttpError(400, f"{where} needs a label (a class name or number), got {kind}", _FEEDBACK_FIX)
        row = item.get("row", 0)
        if isinstance(row, bool) or not isinstance(row, int) or row < 0:
            raise HttpError(400, f"{where}: row must be a non-negative integer, got {shown(json.dumps(row), 24)}",
                            _FEEDBACK_FIX)
    return items


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"method {shown(method, 20)} is not allowed here", f"use {allowed}")


_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_HEAD_TOO_LARGE = HttpError(431, "request head is too large", f"keep the request line and headers under {MAX_HEAD_BYTES} bytes")
_CUT_HEAD = HttpError(400, "the connection ended inside a request head",
                      "end the head with an empty line (CRLF CRLF) and keep the connection open for the answer")
# RFC 9110 5.6.2 tchar: method and header names.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A field value: visible characters, space and tab (RFC 9110 5.5); no CR, LF, NUL or other controls.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
# Content-Length = 1*DIGIT (RFC 9110 8.6), ASCII only: int() also reads "1_0", "+10", " 10" and
# other scripts' digits, and a proxy that reads those differently sees another request end.
_DIGITS = re.compile(r"[0-9]+")
_MAX_LENGTH_DIGITS = 18  # past any limit; longer is refused as too large without building the int
# A target: origin-form "/path?query", or absolute-form "http://host/path" (RFC 9112 3.2).
_ABSOLUTE = re.compile(r"https?://[^/?#]*", re.IGNORECASE)
_TARGET = re.compile(r"/[\x21-\x7e\x80-\xff]*")


def _malformed(what: str, fix: str = "send an HTTP/1.1 request: METHOD /path HTTP/1.1, then Name: value lines") -> HttpError:
    return HttpError(400, what, fix, close=True)


def _parse_head(head: bytes) -> tuple[str, str, bool, int, bool]:
    """(method, path, keep_alive, content_length, expects_100_continue) of a request head (``_read_head``)."""
    return _read_head(head)[:5]  # type: ignore[return-value]


# The headers a prediction's body is read with (edgefleet.inputs.Body): its media type, and a raw tensor's shape and dtype.
_MEDIA_HEADERS = ("content-type", SHAPE_HEADER, DTYPE_HEADER)


def _read_head(head: bytes) -> tuple[str, str, bool, int, bool, dict[str, str]]:
    """(method, path, keep_alive, content_length, expects_100_continue, media headers) of a request head.

    Raises ``HttpError`` (400, 411, 505; always closing the connection) for a head that this
    server, or a stricter one in front of it, could read differently.
    """
    text = head.decode("latin-1")  # every byte maps: never raises
    request_line, *lines = text[:-4].split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise _malformed(f"malformed request line {shown(request_line, 40)}: it needs METHOD TARGET VERSION "
                         "separated by single spaces")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise _malformed(f"malformed method {shown(method, 20)}")
    absolute = _ABSOLUTE.match(target)
    if absolute is not None:
        target = target[absolute.end():] or "/"
    if not _TARGET.fullmatch(target) and not (target == "*" and method == "OPTIONS"):
        raise _malformed(f"malformed request target {shown(target, 40)}", "send a path starting with /")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise _malformed(f"malformed HTTP version {shown(version, 20)}", "use HTTP/1.1")
    # Only a well-formed request line of another major version is a 505; anything malformed is a 400.
    if match.group(1) != "1":
        raise HttpError(505, f"{version} is not supported", "use HTTP/1.1", close=True)
    http10 = version == "HTTP/1.0"  # HTTP/1.2 and up read as 1.1 (RFC 9110 2.5)
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            # No colon, a space before it, or a folded continuation line (RFC 9112 5.1-5.2).
            raise _malformed(f"malformed header line {shown(line, 40)}")
        if not _FIELD_VALUE.fullmatch(value):
            raise _malformed(f"header {shown(name, 40)} holds a control character")
        key = name.lower()
        if key in ("content-length", "transfer-encoding", "host") and key in headers:
            raise _malformed(f"the {name} header is given twice", f"send one {name} header")
        headers[key] = value.strip(" \t")
    connection = headers.get("connection", "").lower()
    keep_alive = connection == "keep-alive" if http10 else connection != "close"
    if "transfer-encoding" in headers:
        raise HttpError(411, "request bodies with a Transfer-Encoding (chunked or other) are not supported",
                        "send a Content-Length header instead", close=True)
    declared = headers.get("content-length")
    if declared is None:
        if method in _METHODS_WITH_BODY:
            # Without a length the body's end is unknown (no chunked support): refuse rather than
            # read the body as the next request.
            raise HttpError(411, f"{method} needs a Content-Length header", "send a Content-Length header (0 for no body)",
                            close=True)
        declared = "0"
    if not _DIGITS.fullmatch(declared):
        raise _malformed(f"Content-Length {shown(declared, 24)} is not a decimal number",
                         "send Content-Length as plain digits 0-9, e.g. Content-Length: 42")
    length = int(declared) if len(declared) <= _MAX_LENGTH_DIGITS else 10 ** _MAX_LENGTH_DIGITS
    path = target.split("?", 1)[0]
    media = {key: headers[key] for key in _MEDIA_HEADERS if key in headers}
    return method, path, keep_alive, length, headers.get("expect", "").lower() == "100-continue", media


# Heads already read, by their bytes: a local client sends the same head again and again (same
# path, headers and, for a fixed-width model, often the same Content-Length), and reading one
# strictly costs a dozen regular expressions. Only short heads, and emptied when full, so a
# client sending ever new heads costs at most _HEAD_CACHE x _HEAD_CACHE_BYTES (128 KiB).
_HEAD_CACHE = 256
_HEAD_CACHE_BYTES = 512
_heads_read: dict[bytes, tuple[str, str, bool, int, bool, dict[str, str]]] = {}


def _head_of(head: bytes) -> tuple[str, str, bool, int, bool, dict[str, str]]:
    """``_read_head``, remembered for short heads (a pure function of the bytes; a head it
    refuses raises every time). The media dict is shared between requests: callers only read it."""
    read = _heads_read.get(head)
    if read is None:
        read = _read_head(head)
        if len(head) <= _HEAD_CACHE_BYTES:
            if len(_heads_read) >= _HEAD_CACHE:
                _heads_read.clear()
            _heads_read[head] = read
    return read


def _socket_dir(directory: Path) -> None:
    """Make the socket's directory if missing: 0750, so the group it takes may reach the socket.

    An existing directory keeps its owner, group and mode (systemd's RuntimeDirectory=, or the
    state directory, whose 0700 keeps the socket to the agent's own user).
    """
    if directory.is_dir():
        return
    try:
        directory.mkdir(mode=0o750, parents=True)
        os.chmod(directory, 0o750)  # mkdir's mode is masked by the umask
    except OSError as exc:
        raise AgentError(f"cannot create the socket directory {directory}: {exc.strerror or exc}",
                         fix="create it (e.g. systemd RuntimeDirectory=edgefleet) or pick another --socket-dir") from exc


def _share_with_group(path: Path) -> None:
    """0660 and the directory's group: that group may call the API, other local users may not.

    bind() makes the socket with the process's group and the umask; the directory's group is
    the one the operator chose (e.g. RuntimeDirectory= under the service's Group=).
    """
    os.chmod(path, 0o660)
    group = path.parent.stat().st_gid
    if path.stat().st_gid != group:
        try:
            os.chown(path, -1, group)
        except PermissionError:  # not a member of that group: the socket keeps the agent's own
            log.warning("cannot give %s the group of its directory (gid %d): only this user's group can call it",
                        path, group)


def _link(alias: Path, target: Path) -> Path | None:
    """Point ``alias`` at ``target`` with a symlink, replacing an old link (or stale socket) there."""
    temporary = alias.with_name(f".{alias.name}.{os.getpid()}.tmp")
    try:
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target.absolute())  # a relative target would resolve from the link's directory
        os.replace(temporary, alias)  # atomic: a CLI reading the old link meanwhile sees one or the other
    except OSError as exc:
        log.warning("cannot link %s to the socket %s (%s): tell clients the socket's path", alias, target, exc)
        return None
    return alias


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
