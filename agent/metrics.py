"""Per-model serving metrics and process resource use, turned into telemetry records.

``Metrics`` counts, per model version and per reporting interval: inferences, errors by kind,
latency (a log-bucketed histogram, so memory is bounded whatever the traffic and percentiles
are within ``LatencyHistogram.RATIO`` of the truth), and ground-truth feedback. Its
``observe`` has the signature of ``agent.serving.Observer``, so
``table.add_observer(metrics.observe)`` wires it to the serving table. Feedback needs the
prediction it judges: ``remember`` keeps the last ``remember_limit`` requests' predictions by
request id, ``feedback(request_id, label)`` scores one, and ``accuracy`` is the rolling share
correct over the last ``accuracy_window`` labels of that model version.

Beside the interval, ``Metrics`` keeps running totals per model version since the process
started (``totals``): requests, errors by kind, latency in the contract's fixed buckets
(``edgefleet.telemetry.LATENCY_BUCKETS_S``) and feedback, for the agent's Prometheus ``/metrics``
(``agent.prometheus``). They are kept for the last ``KEEP_VERSIONS`` versions of each model, so
a device that went through many updates does not grow a series per version forever.

``observe`` is on every request's path, so it only appends the latency to a queue of its model
version (a ``deque`` append: no lock, no arithmetic); the queues are folded into the counters in
bulk, with numpy, every ``FOLD_EVERY`` requests and before anything is read (``take_records``,
``totals``), so every read is exact and nothing is lost. Failures are rare and are counted at
once (their latency goes through the queue like any other).

``take_records`` closes the interval: it returns one ``edgefleet.telemetry.ModelRecord`` per
model version seen (with drift and output counts from the matching ``DriftWindow``) and resets
the interval counters. ``BatchComposer`` wraps that into a whole batch for the outbox.

``ResourceReader`` reads the agent process's CPU time and RSS from ``/proc`` and the board
temperature from ``/sys/class/thermal`` (the hottest zone; None where the board exposes none),
with no psutil. The parsers are pure functions; the reader takes the roots and a clock so
tests can point it at a prepared tree.

It does not publish, store or decide anything: the daemon's reporter does.

    AgentError (agent.errors)
    └── FeedbackError           feedback for a request id that is unknown or has expired
        └── FeedbackConflictError   that prediction already has its label (one label per row)
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.drift import DriftWindow
from agent.errors import AgentError
from edgefleet.telemetry import (
    DEFAULT_DRIFT_EVERY,
    DEFAULT_INTERVAL_S,
    LATENCY_BUCKETS_S,
    Feedback,
    Latency,
    ModelRecord,
    Resource,
    ShadowRecord,
    TelemetryBatch,
    encode,
    trim_buckets,
)

DEFAULT_ACCURACY_WINDOW = 500
DEFAULT_REMEMBER = 10_000
# Versions of one model whose running totals are kept (the reporter keeps as many drift windows).
KEEP_VERSIONS = 3
_BUCKETS = len(LATENCY_BUCKETS_S) + 1
_BOUNDS_S = np.asarray(LATENCY_BUCKETS_S, dtype=np.float64)
# Latencies queued per model version before the observing thread folds them into the counters:
# a fold costs a few numpy calls, so 1,024 of them make it well under a microsecond a request.
FOLD_EVERY = 1024

ModelKey = tuple[str, str]
"""(model name, version)."""


class FeedbackError(AgentError):
    """Feedback names a request the agent does not remember."""


class FeedbackConflictError(FeedbackError):
    """The prediction was labelled already: a second label would count it twice in accuracy."""


class LatencyHistogram:
    """Latencies in log-spaced buckets from ``LOW_MS`` up: bounded memory, ~5% percentile error."""

    RATIO = 1.05
    LOW_MS = 0.01
    BUCKETS = 400  # 0.01 ms * 1.05**400 is about 3 hours: nothing real falls off the end

    def __init__(self) -> None:
        self.counts = [0] * (self.BUCKETS + 1)
        self.total = 0
        self._log_ratio = math.log(self.RATIO)

    def add(self, ms: float) -> None:
        if not ms > self.LOW_MS:  # also catches NaN
            index = 0
        else:
            index = min(self.BUCKETS, 1 + int(math.log(ms / self.LOW_MS) / self._log_ratio))
        self.counts[index] += 1
        self.total += 1

    def add_many(self, ms: np.ndarray) -> None:
        """``add`` for every value of ``ms`` (float64, milliseconds), vectorised."""
        if not len(ms):
            return
        index = np.zeros(len(ms), dtype=np.int64)
        above = ms > self.LOW_MS  # False for NaN, as in add
        # In floats until clipped: infinity (which add's int() refuses) lands in the last bucket.
        steps = np.trunc(np.log(ms[above] / self.LOW_MS) / self._log_ratio)
        index[above] = np.minimum(float(self.BUCKETS), 1.0 + steps).astype(np.int64)
        for i, n in enumerate(np.bincount(index, minlength=self.BUCKETS + 1).tolist()):
            if n:
                self.counts[i] += n
        self.total += len(ms)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100): the geometric middle of the bucket holding it."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(self.total * q / 100.0))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                if index == 0:
                    return self.LOW_MS
                lower = self.LOW_MS * self.RATIO ** (index - 1)
                return lower * math.sqrt(self.RATIO)
        return None  # unreachable: the counts add up to total

    def latency(self) -> Latency | None:
        p50, p95, p99 = (self.percentile(q) for q in (50, 95, 99))
        if p50 is None or p95 is None or p99 is None:
            return None
        return Latency(p50, p95, p99)


def _no_buckets() -> list[int]:
    return [0] * _BUCKETS


@dataclass
class _Interval:
    count: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    buckets: list[int] = field(default_factory=_no_buckets)
    labels: int = 0
    correct: int = 0


@dataclass
class _Running:
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    buckets: list[int] = field(default_factory=_no_buckets)
    latency_s: float = 0.0
    labels: int = 0
    correct: int = 0


@dataclass(frozen=True)
class Totals:
    """One model version's counts since the agent started (a copy: it does not change after)."""

    model: str
    version: str
    requests: int
    errors: Mapping[str, int]
    buckets: tuple[int, ...]  # per LATENCY_BUCKETS_S bucket, the overflow last; not cumulative
    latency_s: float  # sum of the requests' latencies
    labels: int
    correct: int


@dataclass(frozen=True)
class Accuracy:
    """Rolling accuracy of one model version over its last ``labels`` feedback labels."""

    model: str
    version: str
    labels: int
    correct: int

    @property
    def value(self) -> float | None:
        return self.correct / self.labels if self.labels else None


_Remembered = tuple[str, str, tuple[Any, ...]]
"""(model, version, predictions as served) of one request. A tuple of plain values, which the
garbage collector stops tracking: 10,000 of them are kept, and tracked objects make every full
collection longer (the labels given so far are apart, in ``Metrics._labelled``)."""


class Metrics:
    """Counters for every model version this agent serves. Thread-safe."""

    def __init__(self, *, accuracy_window: int = DEFAULT_ACCURACY_WINDOW,
                 remember_limit: int = DEFAULT_REMEMBER) -> None:
        self.accuracy_window = accuracy_window
        self.remember_limit = remember_limit
        self._lock = threading.Lock()
        self._interval: dict[ModelKey, _Interval] = {}
        self._running: dict[ModelKey, _Running] = {}
        self._recent: dict[ModelKey, deque[bool]] = {}
        self._requests: OrderedDict[str, _Remembered] = OrderedDict()
        self._labelled: dict[str, set[int]] = {}  # request id -> its rows that have their label
        # Latencies (ms) observed and not folded yet, per model version. Appends take no lock
        # (deque.append is atomic) and a fold pops exactly the items it counts, so an append
        # racing with a fold is counted by the next one, never lost.
        self._queued: dict[ModelKey, deque[float]] = {}

    def _entry(self, key: ModelKey) -> _Interval:
        entry = self._interval.get(key)
        if entry is None:
            entry = self._interval[key] = _Interval()
        return entry

    def _total(self, key: ModelKey) -> _Running:
        total = self._running.get(key)
        if total is None:
            total = self._running[key] = _Running()
            same_model = [k for k in self._running if k[0] == key[0]]
            for old in same_model[:-KEEP_VERSIONS]:  # dicts keep insertion order: oldest first
                del self._running[old]
        return total

    def observe(self, model: str, version: str, latency_ms: float, ok: bool, error_kind: str = "inference") -> None:
        """Count one request (``agent.serving.Observer``); a failed one counts under ``error_kind``.

        The request's path: one append to its version's queue; the counting happens in bulk
        (``_fold``), every ``FOLD_EVERY`` requests or when a count is read.
        """
        key = (model, version)
        queue = self._queued.get(key)
        if queue is None:
            with self._lock:
                queue = self._queued.setdefault(key, deque())
        if not ok:  # rare: counted now, under the lock (its latency is queued like any other)
            with self._lock:
                self._entry(key).errors[error_kind] += 1
                self._total(key).errors[error_kind] += 1
        queue.append(latency_ms)
        # The second test catches a queue a fold let go (its version's totals were dropped)
        # between our lookup and our append: folded now, so that latency is not lost.
        if len(queue) >= FOLD_EVERY or self._queued.get(key) is not queue:
            with self._lock:
                self._fold((key, queue))

    def _fold(self, extra: tuple[ModelKey, deque[float]] | None = None) -> None:
        """Count every queued latency (and ``extra``'s) into the interval and the running totals;
        the caller holds the lock. Per version: one histogram update, one bucket count, one sum."""
        for key, queue in [*self._queued.items(), *([extra] if extra is not None else [])]:
            n = len(queue)
            if not n:
                continue
            # popleft, not a copy-and-clear: an append racing with this fold stays for the next.
            ms = np.fromiter((queue.popleft() for _ in range(n)), dtype=np.float64, count=n)
            entry, total = self._entry(key), self._total(key)
            entry.count += n
            entry.latency.add_many(ms)
            seconds = ms / 1000.0
            # searchsorted(side="left") is latency_bucket's bisect_left; NaN sorts past the last bound.
            buckets = np.bincount(np.searchsorted(_BOUNDS_S, seconds, side="left"), minlength=_BUCKETS).tolist()
            for i, c in enumerate(buckets):
                if c:
                    entry.buckets[i] += c
                    total.buckets[i] += c
            total.requests += n
            total.latency_s += float(seconds[np.isfinite(seconds)].sum())  # NaN would poison the sum for good
        # Queues of versions whose totals were let go (KEEP_VERSIONS) go too, once empty.
        for key in [k for k, q in self._queued.items() if not q and k not in self._running]:
            del self._queued[key]

    def error(self, model: str, version: str, kind: str) -> None:
        """Count an error that never reached the runtime (bad input, timeout)."""
        with self._lock:
            self._entry((model, version)).errors[kind] += 1
            self._total((model, version)).errors[kind] += 1

    def remember(self, request_id: str, model: str, version: str, predictions: Sequence[Any]) -> None:
        """Keep a request's predictions so that later feedback can be scored against them."""
        self.remember_many([(request_id, model, version, predictions)])

    def remember_many(self, items: Sequence[tuple[str, str, str, Sequence[Any]]]) -> None:
        """``remember`` for (request_id, model, version, predictions) items, under one lock. The
        predictions are kept as served, turned into strings only when feedback scores them."""
        with self._lock:
            requests, labelled = self._requests, self._labelled
            for request_id, model, version, predictions in items:
                if request_id in requests:  # the same id again: a new prediction, no label yet
                    requests.move_to_end(request_id)
                    labelled.pop(request_id, None)
                requests[request_id] = (model, version, tuple(predictions))
            while len(requests) > self.remember_limit:
                labelled.pop(requests.popitem(last=False)[0], None)

    def feedback(self, request_id: str, label: Any, *, row: int = 0) -> bool:
        """Score the ground-truth ``label`` of row ``row`` of an earlier request; True if it was right."""
        with self._lock:
            seen = self._requests.get(request_id)
            # The id is the client's text, not ours: it is not echoed (an unknown one may be megabytes).
            if seen is None:
                raise FeedbackError("no prediction with that request id is remembered",
                                    fix=f"send feedback for one of the last {self.remember_limit} requests, "
                                        "with the request_id the predict API returned")
            model, version, predictions = seen
            if not 0 <= row < len(predictions):
                raise FeedbackError(f"that request has {len(predictions)} row(s); row {row} does not exist",
                                    fix="send the row index of the prediction the label is for")
            rows = self._labelled.setdefault(request_id, set())
            if row in rows:
                # Labelling one prediction again (a retry, a double click, a hostile client) would
                # weigh it twice in the accuracy the fleet sees.
                raise FeedbackConflictError(f"row {row} of that request is labelled already",
                                            fix="send one label per prediction; a retried request that got "
                                                "an answer was counted")
            rows.add(row)
            # Labels compare as strings, like the drift counters do: 3 and "3" are one class.
            correct = str(predictions[row]) == str(label)
            key = (model, version)
            entry = self._entry(key)
            entry.labels += 1
            entry.correct += int(correct)
            total = self._total(key)
            total.labels += 1
            total.correct += int(correct)
            recent = self._recent.setdefault(key, deque(maxlen=self.accuracy_window))
            recent.append(correct)
            return correct

    def accuracy(self, model: str, version: str) -> Accuracy:
        with self._lock:
            recent = self._recent.get((model, version), deque())
            return Accuracy(model, version, len(recent), sum(recent))

    def accuracies(self) -> list[Accuracy]:
        with self._lock:
            keys = sorted(self._recent)
        return [self.accuracy(m, v) for m, v in keys]

    def totals(self) -> list[Totals]:
        """Running totals per model version since start (the last ``KEEP_VERSIONS`` of each model)."""
        with self._lock:
            self._fold()
            return [Totals(m, v, t.requests, dict(t.errors), tuple(t.buckets), t.latency_s, t.labels, t.correct)
                    for (m, v), t in sorted(self._running.items())]

    def take_records(self, drift: Mapping[ModelKey, DriftWindow] | None = None, *,
                     include_features: bool = True) -> list[ModelRecord]:
        """Close the interval: one record per model version with traffic or drift counts."""
        drift = drift or {}
        with self._lock:
            self._fold()
            taken, self._interval = self._interval, {}
        records = []
        for key in sorted(set(taken) | set(drift)):
            entry = taken.get(key) or _Interval()
            features, outputs = drift[key].take_interval(include_features=include_features) if key in drift else ((), ())
            if not entry.count and not entry.errors and not entry.labels and not any(outputs) \
                    and not any(any(f) for f in features):
                continue  # an idle model costs no bytes
            records.append(ModelRecord(
                model=key[0], version=key[1], count=entry.count, errors=dict(entry.errors),
                latency=entry.latency.latency(), outputs=outputs if any(outputs) else (),
                drift=features if any(any(f) for f in features) else (),
                feedback=Feedback(entry.labels, entry.correct), latency_buckets=trim_buckets(entry.buckets),
            ))
        return records


# ---- one interval's batch ---------------------------------------------------------------------

class BatchComposer:
    """Closes an interval into a telemetry batch for ``Outbox.append``.

        composer = BatchComposer(device_id, metrics, windows=lambda: drift_windows_by_version)
        every interval_s:  outbox.append(composer.compose(time.time()))

    ``compose`` takes the counters now (outside the outbox's transaction) and returns the
    payload factory the outbox calls with the seq and drop count it assigns. Feature counts
    go on every ``drift_every``-th batch (``edgefleet.telemetry.DEFAULT_DRIFT_EVERY``).
    ``shadow`` closes the interval's shadow records (``ServingTable.take_shadow_records``).
    """

    def __init__(self, device_id: str, metrics: Metrics, *,
                 windows: Callable[[], Mapping[ModelKey, DriftWindow]] = dict,
                 resource: Callable[[], Resource] | None = None,
                 interval_s: float = DEFAULT_INTERVAL_S, drift_every: int = DEFAULT_DRIFT_EVERY,
                 shadow: Callable[[], Sequence[ShadowRecord]] = tuple) -> None:
        if drift_every < 1:
            raise AgentError(f"drift_every must be at least 1, got {drift_every}",
                             fix="send feature counts on every Nth batch, N >= 1")
        self.device_id = device_id
        self.metrics = metrics
        self.windows = windows
        self.resource = resource or ResourceReader().read
        self.interval_s = interval_s
        self.drift_every = drift_every
        self.shadow = shadow
        self._composed = 0

    def compose(self, now: float) -> Callable[[int, int], bytes]:
        self._composed += 1
        include = self._composed % self.drift_every == 0
        records = self.metrics.take_records(self.windows(), include_features=include)
        batch = TelemetryBatch(self.device_id, 0, now, self.interval_s, 0, self.resource(), tuple(records),
                               tuple(self.shadow()))
        return lambda seq, dropped: encode(replace(batch, seq=seq, dropped=dropped))


# ---- resource use from /proc and /sys ----------------------------------------------------

def parse_proc_stat_cpu_ticks(text: str) -> int:
    """utime + stime (clock ticks) from ``/proc/PID/stat``.

    The command name (field 2) is in parentheses and may hold spaces or ')', so fields are
    counted from the last ')'.
    """
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def parse_statm_rss(text: str, page_size: int) -> int:
    """Resident set size in bytes from ``/proc/PID/statm`` (second field, in pages)."""
    return int(text.split()[1]) * page_size


def read_temperature_c(sys_root: Path) -> float | None:
    """The hottest thermal zone in degrees C, or None where the board exposes none."""
    readings = []
    for zone in sorted((sys_root / "class" / "thermal").glob("thermal_zone*/temp")):
        try:
            readings.append(int(zone.read_text().strip()) / 1000.0)  # millidegrees
        except (OSError, ValueError):
            continue  # some zones refuse reads (EIO/ENODATA) on real boards
    return max(readings) if readings else None


class ResourceReader:
    """CPU % since the previous read, RSS and temperature of a process, without psutil."""

    def __init__(self, *, proc_root: str | Path = "/proc", sys_root: str | Path = "/sys", pid: int | str = "self",
                 clock: Callable[[], float] = time.monotonic,
                 ticks_per_s: int | None = None, page_size: int | None = None) -> None:
        self.proc = Path(proc_root) / str(pid)
        self.sys_root = Path(sys_root)
        self._clock = clock
        self._ticks = ticks_per_s or os.sysconf("SC_CLK_TCK")
        self._page = page_size or os.sysconf("SC_PAGE_SIZE")
        self._last: tuple[float, int] | None = None

    def read(self) -> Resource:
        now = self._clock()
        cpu: float | None = None
        rss: int | None = None
        try:
            ticks = parse_proc_stat_cpu_ticks((self.proc / "stat").read_text())
        except (OSError, ValueError, IndexError):
            ticks = None
        if ticks is not None:
            if self._last is not None and now > self._last[0]:
                cpu = max(0.0, (ticks - self._last[1]) / self._ticks / (now - self._last[0]) * 100.0)
            self._last = (now, ticks)
        try:
            rss = parse_statm_rss((self.proc / "statm").read_text(), self._page)
        except (OSError, ValueError, IndexError):
            rss = None
        return Resource(cpu_percent=cpu, rss_bytes=rss, temperature_c=read_temperature_c(self.sys_root))
