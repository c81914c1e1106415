"""The serving table: which session answers each model's requests, swapped without failing one.

``swap(name, session)`` installs a new session for new calls; calls already running keep the
session they started with, and the old session is closed when the last of them finishes.
Each call takes a reference under a short lock, so a swap can never close a session under a
running request. ``stats(name)`` exposes requests, errors and recent latencies of the session
now serving (reset by a swap, which is what a probation watcher wants to judge the new model
on); ``add_observer`` gives every call's outcome to telemetry.

It does not decide when to swap (the update path and the daemon do) and does no HTTP.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.errors import InferenceError, InputError, ModelNotFoundError
from agent.inputs import DEFAULT_MAX_ROWS, to_matrix
from agent.runtime import ModelSession

LATENCY_WINDOW = 2048

Observer = Callable[[str, str, float, bool], None]
"""Called after every prediction with (model, version, latency_ms, ok)."""


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

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

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
        with self._lock:
            old = self._entries.pop(name, None)
            close_now = old is not None and self._retire(old)
        if close_now and old is not None:
            old.session.close()

    def close(self) -> None:
        for name in self.names():
            self.remove(name)

    @staticmethod
    def _retire(entry: _Entry) -> bool:
        entry.retired = True
        return entry.inflight == 0

    def _acquire(self, name: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                known = ", ".join(sorted(self._entries)) or "none"
                raise ModelNotFoundError(f"no model named {name!r} is being served (serving: {known})",
                                         fix="install one with `edgefleet agent install BUNDLE` or check the name")
            entry.inflight += 1
            return entry

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

    def predict(self, name: str, rows: Any, *, request_id: str | None = None) -> PredictionResult:
        """Predict with the session serving ``name`` now.

        ``rows`` is a float matrix, a list of rows, one row, or a decoded request body
        (``{"inputs": ...}`` / ``{"instances": ...}``); it is checked against the manifest of
        the very session that runs it, so a swap between two input specs cannot mix them.
        """
        entry = self._acquire(name)
        start = self._clock()
        outcome = "error"
        manifest = entry.session.manifest
        try:
            try:
                matrix = to_matrix(rows, manifest.input, max_rows=self.max_rows)
            except InputError:
                outcome = "input"
                raise
            roles = entry.session.run_roles(matrix)
            outcome = "ok"
        finally:
            latency_ms = (self._clock() - start) * 1000.0
            self._release(entry, latency_ms, outcome)
            if outcome != "input":
                for observer in self._observers:
                    observer(name, manifest.version, latency_ms, outcome == "ok")
        if manifest.task == "classification":
            predictions = _jsonable(roles["label"])
            probs = roles.get("probabilities")
            probabilities = _jsonable(probs) if probs is not None else None
        else:
            if "value" not in roles:
                raise InferenceError(f"{manifest.ref} produced no value output")
            predictions, probabilities = _jsonable(roles["value"]), None
        return PredictionResult(name, manifest.version, request_id or uuid.uuid4().hex, predictions,
                                probabilities, latency_ms)

    def stats(self, name: str) -> ServingStats:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise ModelNotFoundError(f"no model named {name!r} is being served")
            m = entry.session.manifest
            return ServingStats(name, m.version, entry.session.slot.sha256, entry.requests, entry.errors,
                                entry.input_errors, tuple(entry.latencies), entry.since)
