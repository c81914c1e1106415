"""The serving table: which session answers each model's requests, swapped without failing one.

``swap(name, session)`` installs a new session for new calls; calls already running keep the
session they started with, and the old session is closed when the last of them finishes.
Each call takes a reference under a short lock, so a swap can never close a session under a
running request. ``stats(name)`` exposes requests, errors and recent latencies of the session
now serving (reset by a swap, which is what a probation watcher wants to judge the new model
on). Telemetry plugs in through three hooks, all called on the request's own thread:

* ``add_observer(fn)``: (model, version, latency_ms, ok) of every call that reached a model;
* ``add_request_observer(fn)``: one ``Served`` per call, including refused input, carrying the
  checked input (the matrix of a single-input model, else the feeds by input name) and the
  predictions of a successful one (drift counts, feedback);
* ``add_swap_listener(fn)``: (name, session) whenever a new session starts serving, so a
  per-version drift window can be built from that session's bundle before it answers.

Observers must be cheap (they run inside the request's latency) and must not raise; an
observer that does is logged and the request still succeeds.

A model may have a CANDIDATE beside the session that serves it (issue 18; agent/updater.py
starts and ends it):

* ``start_shadow(name, mirror)``: after the serving session answered a request, the request's
  checked input and answer are offered to the ``agent.mirror.Mirror`` (a sampling draw and a
  non-blocking put); the candidate runs on the mirror's own thread and NEVER answers.
* ``start_canary(name, session, share)``: ``share`` of the requests (independent draws) are
  answered by the candidate; its answers carry its version, and observers see its version, so
  its counts, latency, drift and feedback are its own, apart from the serving version's.
* ``end_candidate(name)`` stops either; the shadow figures of an ended stage stay for the next
  ``take_shadow_records``.

It does not decide when to swap (the update path and the daemon do) and does no HTTP.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.batcher import run_merged
from agent.errors import InferenceError, ModelNotFoundError
from agent.mirror import Mirror
from agent.runtime import ModelSession
from agent.shadow import Sampler, ShadowTally, ShadowTotals
from edgefleet.errors import InputError
from edgefleet.inputs import DEFAULT_MAX_ROWS, Feeds, is_matrix, to_feeds
from edgefleet.telemetry import ShadowRecord

LATENCY_WINDOW = 2048

log = logging.getLogger("agent.serving")

Observer = Callable[[str, str, float, bool], None]
"""Called after every prediction with (model, version, latency_ms, ok)."""


@dataclass(frozen=True, slots=True)
class Served:
    """One call's outcome for telemetry. ``outcome`` is "ok", "input" (refused before the model
    ran) or "inference" (the runtime failed); ``predictions`` and either ``matrix`` (a model with
    one tensor input) or ``feeds`` (named inputs, e.g. columns) are set when ok.

    Built by the table itself, never from outside input, so it checks nothing: it is on the
    hot path.
    """

    model: str
    version: str
    request_id: str
    outcome: str
    latency_ms: float
    matrix: np.ndarray | None = None
    predictions: list[Any] | None = None
    feeds: Feeds | None = None


RequestObserver = Callable[[Served], None]
SwapListener = Callable[[str, ModelSession], None]


@dataclass(frozen=True)
class PredictionResult:
    model: str
    version: str
    request_id: str
    predictions: list[Any]
    probabilities: list[list[float]] | None
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "version": self.version, "request_id": self.request_id,
                                "predictions": self.predictions}
        if self.probabilities is not None:
            body["probabilities"] = self.probabilities
        return body


@dataclass(frozen=True)
class ServingStats:
    """Counters of the session now serving a model, since it was swapped in."""

    name: str
    version: str
    sha256: str
    requests: int
    errors: int
    input_errors: int
    latencies_ms: tuple[float, ...]
    since: float

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.asarray(self.latencies_ms), q))


@dataclass
class _Entry:
    session: ModelSession
    since: float
    inflight: int = 0
    retired: bool = False
    requests: int = 0
    errors: int = 0
    input_errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


@dataclass
class _Canary:
    entry: _Entry
    sampler: Sampler
    serving_version: str


class _RequestIds:
    """32 hex characters per call, unique within this process and across restarts.

    A random prefix drawn once plus a counter: ``uuid4()`` per request cost about 3% of a
    request's CPU (py-spy), and these ids only need to be unique, not unpredictable.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()  # next() on it is atomic under the GIL

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def _single_tensor(session: ModelSession) -> bool:
    # One [batch, features] matrix (every schema-1 bundle): the run_roles path wrappers and probes know.
    return is_matrix(session.manifest.inputs)


def _jsonable(values: np.ndarray) -> list[Any]:
    return values.tolist()  # numpy scalars (int64, float32, str_) become plain Python values


class ServingTable:
    """Sessions by model name. Thread-safe; every method may be called from any thread."""

    def __init__(self, *, max_rows: int = DEFAULT_MAX_ROWS, clock: Callable[[], float] = time.perf_counter,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.max_rows = max_rows
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._observers: list[Observer] = []
        self._request_observers: list[RequestObserver] = []
        self._swap_listeners: list[SwapListener] = []
        self._request_id = _RequestIds()
        # Candidates (issue 18). Read without the lock on the request path (a dict lookup is
        # atomic); changed under it.
        self._shadow: dict[str, Mirror] = {}
        self._canary: dict[str, _Canary] = {}
        self._ended: list[ShadowTally] = []  # tallies of ended stages, until their last interval is taken

    # -- candidates -------------------------------------------------------------------------------
    def start_shadow(self, name: str, mirror: Mirror) -> None:
        """Mirror ``name``'s served requests to ``mirror`` (whose candidate never answers)."""
        self.end_candidate(name)
        mirror.busy = lambda: self._busy(name)
        with self._lock:
            self._shadow[name] = mirror

    def start_canary(self, name: str, session: ModelSession, share: float, *,
                     draw: Callable[[], float] | None = None) -> None:
        """Let ``session`` answer ``share`` of ``name``'s requests, under its own version."""
        self.end_candidate(name)
        for listener in list(self._swap_listeners):  # its drift window exists before its first answer
            self._tell_swap(listener, name, session)
        with self._lock:
            serving = self._entries.get(name)
            version = serving.session.manifest.version if serving is not None else ""
            self._canary[name] = _Canary(_Entry(session, self._wall()), Sampler(share, draw), version)

    def _busy(self, name: str) -> bool:
        """Whether a served request of ``name`` is running now (read without the lock: a hint)."""
        entry = self._entries.get(name)
        return entry is not None and entry.inflight > 0

    def end_candidate(self, name: str) -> None:
        """Stop the shadow or canary of ``name``, if any; its candidate session is closed once idle."""
        with self._lock:
            mirror = self._shadow.pop(name, None)
            canary = self._canary.pop(name, None)
            close_now = canary is not None and self._retire(canary.entry)
            if mirror is not None:
                self._ended.append(mirror.tally)
        if mirror is not None:
            mirror.stop()
        if close_now and canary is not None:
            canary.entry.session.close()

    def candidates(self) -> list[dict[str, Any]]:
        """The candidate of each model that has one: mode, versions, rate, and the shadow totals."""
        out: list[dict[str, Any]] = []
        with self._lock:
            shadows = dict(self._shadow)
            canaries = dict(self._canary)
        for name, mirror in sorted(shadows.items()):
            out.append({"model": name, "mode": "shadow", "version": mirror.version, "serving": mirror.serving_version,
                        "sample": mirror.sampler.rate, "queued": mirror.pending(), **{
                            k: v for k, v in mirror.tally.totals().to_dict().items()
                            if k in ("compared", "agreed", "skipped", "errors", "agreement")}})
        for name, canary in sorted(canaries.items()):
            entry = canary.entry
            out.append({"model": name, "mode": "canary", "version": entry.session.manifest.version,
                        "serving": canary.serving_version, "share": canary.sampler.rate,
                        "requests": entry.requests, "errors": entry.errors})
        return out

    def take_shadow_records(self) -> list[ShadowRecord]:
        """Close the shadow interval of every candidate (those of ended stages a last time)."""
        with self._lock:
            tallies = [m.tally for m in self._shadow.values()] + self._ended
            self._ended = []
        return [r for r in (t.take() for t in tallies) if r is not None]

    def shadow_totals(self) -> list[ShadowTotals]:
        """Running shadow figures of the candidates in a shadow stage now."""
        with self._lock:
            mirrors = list(self._shadow.values())
        return [m.tally.totals() for m in mirrors]

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    def add_request_observer(self, observer: RequestObserver) -> None:
        self._request_observers.append(observer)

    def add_swap_listener(self, listener: SwapListener) -> None:
        """Call ``listener(name, session)`` for every session swapped in from now on, and for
        those serving already (a listener added after start-up sees the current models)."""
        with self._lock:
            current = [(name, entry.session) for name, entry in self._entries.items()]
            self._swap_listeners.append(listener)
        for name, session in current:
            self._tell_swap(listener, name, session)

    @staticmethod
    def _tell_swap(listener: SwapListener, name: str, session: ModelSession) -> None:
        try:
            listener(name, session)
        except Exception:  # telemetry must never stop a model from serving
            log.exception("swap listener failed for %s", name)

    def _notify(self, served: Served) -> None:
        for observer in self._request_observers:
            try:
                observer(served)
            except Exception:
                log.exception("request observer failed for %s@%s", served.model, served.version)

    def reject(self, name: str, kind: str = "input", *, request_id: str | None = None) -> None:
        """Count a request for ``name`` refused before it reached the table (e.g. a body that is
        not JSON) as an error of ``kind`` against the version serving now; unknown names are
        not counted (there is no model to blame)."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is not None and self._request_observers:
            self._notify(Served(name, entry.session.manifest.version, request_id or "", kind, 0.0))

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def get(self, name: str) -> ModelSession | None:
        """The session serving ``name`` now (for reading its manifest; do not close it)."""
        with self._lock:
            entry = self._entries.get(name)
            return entry.session if entry else None

    def swap(self, name: str, session: ModelSession) -> ModelSession | None:
        """Serve ``name`` from ``session``; returns the session it replaced (closed when idle)."""
        new = _Entry(session, self._wall())
        # Listeners run before the new session is reachable, so its first request already
        # finds (say) its drift window; outside the lock, because they may read files.
        for listener in list(self._swap_listeners):
            self._tell_swap(listener, name, session)
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old.session is session:
                return None  # already serving it: nothing to retire
            self._entries[name] = new
            close_now = old is not None and self._retire(old)
        if close_now and old is not None:
            old.session.close()
        return old.session if old else None

    def remove(self, name: str) -> None:
        self.end_candidate(name)
        with self._lock:
            old = self._entries.pop(name, None)
            close_now = old is not None and self._retire(old)
        if close_now and old is not None:
            old.session.close()

    def close(self) -> None:
        for name in {*self.names(), *self._shadow, *self._canary}:
            self.remove(name)

    @staticmethod
    def _retire(entry: _Entry) -> bool:
        entry.retired = True
        return entry.inflight == 0

    def _acquire(self, name: str, calls: int = 1, *, canary: bool = False) -> _Entry:
        """The entry that runs the call(s): the serving session's, or the canary's when asked for
        and still there (a canary ended between the draw and here leaves the call to the serving one)."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                known = ", ".join(sorted(self._entries)) or "none"
                raise ModelNotFoundError(f"no model named {name!r} is being served (serving: {known})",
                                         fix="install one with `edgefleet agent install BUNDLE` or check the name")
            if canary:
                arm = self._canary.get(name)
                if arm is not None:
                    entry = arm.entry
            entry.inflight += calls
            return entry

    def _canary_pick(self, name: str) -> bool:
        arm = self._canary.get(name)
        return arm is not None and arm.sampler()

    def _release(self, entry: _Entry, latency_ms: float, outcome: str) -> None:
        with self._lock:
            entry.inflight -= 1
            if outcome == "input":
                entry.input_errors += 1
            else:
                entry.requests += 1
                entry.latencies.append(latency_ms)
                if outcome == "error":
                    entry.errors += 1
            close_now = entry.retired and entry.inflight == 0
        if close_now:
            entry.session.close()

    def _release_many(self, entry: _Entry, latency_ms: float, oks: list[bool]) -> None:
        """``_release`` of a micro-batch's calls that reached the model, under one lock."""
        if not oks:
            return
        with self._lock:
            entry.inflight -= len(oks)
            entry.requests += len(oks)
            entry.errors += oks.count(False)
            entry.latencies.extend([latency_ms] * len(oks))
            close_now = entry.retired and entry.inflight == 0
        if close_now:
            entry.session.close()

    def predict(self, name: str, rows: Any, *, request_id: str | None = None) -> PredictionResult:
        """Predict with the session serving ``name`` now.

        ``rows`` is a float matrix, a list of rows, one row, a decoded request body
        (``{"inputs": ...}`` / ``{"instances": ...}``; records by column name for a model with
        named column inputs; arrays by input name for N-D tensors), or an
        ``edgefleet.inputs.Body`` (a binary body: .npy, .npz, raw); it is checked against the
        manifest of the very session that runs it, so a swap between two input specs cannot mix them. Raises
        ``edgefleet.errors.InputError`` (from the shared parser) for input that does not fit.
        """
        entry = self._acquire(name, canary=self._canary_pick(name))
        start = self._clock()
        outcome = "error"
        manifest = entry.session.manifest
        request_id = request_id or self._request_id()
        matrix: np.ndarray | None = None
        try:
            try:
                feeds = to_feeds(rows, manifest.inputs, max_rows=self.max_rows)
            except InputError:
                outcome = "input"
                raise
            if _single_tensor(entry.session):
                # One tensor input (every schema-1 bundle): the matrix path wrappers and probes know.
                matrix = feeds[manifest.inputs[0].name]
                roles = entry.session.run_roles(matrix)
            else:
                roles = entry.session.run_feeds(feeds)
            outcome = "ok"
        finally:
            latency_ms = (self._clock() - start) * 1000.0
            self._release(entry, latency_ms, outcome)
            if outcome != "input":
                for observer in self._observers:
                    try:
                        observer(name, manifest.version, latency_ms, outcome == "ok")
                    except Exception:  # telemetry must never fail the prediction it counts
                        log.exception("observer failed for %s@%s", name, manifest.version)
            if outcome != "ok" and self._request_observers:
                self._notify(Served(name, manifest.version, request_id,
                                    "input" if outcome == "input" else "inference", latency_ms))
        return self._result(name, manifest, request_id, roles, latency_ms, matrix, feeds)

    def _result(self, name: str, manifest: Any, request_id: str, roles: dict[str, np.ndarray], latency_ms: float,
                matrix: np.ndarray | None, feeds: Feeds) -> PredictionResult:
        if manifest.task == "classification":
            predictions = _jsonable(roles["label"])
            probs = roles.get("probabilities")
            probabilities = _jsonable(probs) if probs is not None else None
        else:
            if "value" not in roles:
                raise InferenceError(f"{manifest.ref} produced no value output")
            predictions, probabilities = _jsonable(roles["value"]), None
        if self._request_observers:
            self._notify(Served(name, manifest.version, request_id, "ok", latency_ms, matrix, predictions,
                                None if matrix is not None else feeds))
        mirror = self._shadow.get(name)
        if mirror is not None and mirror.serving_version == manifest.version:
            # After the answer is made, before it is sent: a draw and a non-blocking put (agent.mirror).
            mirror.offer(matrix, None if matrix is not None else feeds, predictions, latency_ms)
        return PredictionResult(name, manifest.version, request_id, predictions, probabilities, latency_ms)

    def predict_many(self, name: str, payloads: list[Any]) -> list[PredictionResult | Exception]:
        """``predict`` for several requests at once, with one runtime run for all their rows
        where the model takes one matrix (micro-batching, ``agent.batcher``); otherwise each
        runs on its own. One outcome per payload, in order: its result, or the exception
        ``predict`` would have raised for it (an ``InputError``, an ``InferenceError``), so a
        bad request fails alone. Counters and observers see one call per payload. With a canary,
        each payload is drawn on its own, and the candidate's share runs as a batch of its own.
        """
        if name not in self._canary:
            return self._predict_many(name, self._acquire(name, len(payloads)), payloads)
        picks = [self._canary_pick(name) for _ in payloads]
        outcomes: list[PredictionResult | Exception] = [InferenceError(f"{name}: no outcome")] * len(payloads)
        for arm in (False, True):
            indices = [i for i, pick in enumerate(picks) if pick is arm]
            if indices:
                entry = self._acquire(name, len(indices), canary=arm)
                for i, outcome in zip(indices, self._predict_many(name, entry, [payloads[i] for i in indices]),
                                      strict=True):
                    outcomes[i] = outcome
        return outcomes

    def _predict_many(self, name: str, entry: _Entry, payloads: list[Any]) -> list[PredictionResult | Exception]:
        """``predict_many`` on one entry, acquired for ``len(payloads)`` calls."""
        manifest = entry.session.manifest
        single = _single_tensor(entry.session)
        start = self._clock()
        outcomes: list[PredictionResult | Exception | None] = [None] * len(payloads)
        ran: list[tuple[int, np.ndarray | None, Feeds, dict[str, np.ndarray] | Exception]] = []
        matrices: list[tuple[int, np.ndarray, Feeds]] = []
        for i, payload in enumerate(payloads):
            try:
                feeds = to_feeds(payload, manifest.inputs, max_rows=self.max_rows)
            except InputError as exc:
                outcomes[i] = exc
                self._release(entry, (self._clock() - start) * 1000.0, "input")
                if self._request_observers:
                    self._notify(Served(name, manifest.version, self._request_id(), "input", 0.0))
                continue
            if single:
                matrices.append((i, feeds[manifest.inputs[0].name], feeds))
                continue
            try:
                ran.append((i, None, feeds, entry.session.run_feeds(feeds)))
            except Exception as exc:
                ran.append((i, None, feeds, exc))
        if matrices:
            merged = run_merged(entry.session.run_roles, [m for _, m, _ in matrices])
            ran += [(i, m, f, roles) for (i, m, f), roles in zip(matrices, merged, strict=True)]
        latency_ms = (self._clock() - start) * 1000.0
        self._release_many(entry, latency_ms, [not isinstance(roles, Exception) for _, _, _, roles in ran])
        for i, matrix, feeds, roles in ran:
            request_id = self._request_id()
            ok = not isinstance(roles, Exception)
            for observer in self._observers:
                try:
                    observer(name, manifest.version, latency_ms, ok)
                except Exception:  # telemetry must never fail the prediction it counts
                    log.exception("observer failed for %s@%s", name, manifest.version)
            if isinstance(roles, Exception):
                if self._request_observers:
                    self._notify(Served(name, manifest.version, request_id, "inference", latency_ms))
                outcomes[i] = roles if isinstance(roles, InferenceError) else InferenceError(
                    f"{manifest.ref} failed to run: {roles}")
                continue
            try:
                outcomes[i] = self._result(name, manifest, request_id, roles, latency_ms, matrix, feeds)
            except InferenceError as exc:
                outcomes[i] = exc
        return [o if o is not None else InferenceError(f"{manifest.ref}: no outcome") for o in outcomes]

    def stats(self, name: str) -> ServingStats:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise ModelNotFoundError(f"no model named {name!r} is being served")
            m = entry.session.manifest
            return ServingStats(name, m.version, entry.session.slot.sha256, entry.requests, entry.errors,
                                entry.input_errors, tuple(entry.latencies), entry.since)
