"""The daemon's telemetry reporter: serving hooks in, outbox in the middle, MQTT out.

It joins the pure cores (``agent.metrics``, ``agent.drift``, ``agent.outbox``) to the daemon:

* **Per request** (``on_request``, a ``ServingTable`` request observer): a successful call is
  queued with the time it was served (one ``deque`` append: this runs inside the request's
  latency); a refused one counts as an error of its kind ("input") at once.
  ``Metrics.observe`` is a separate plain observer (counts and latency), queued the same way.
* **In bulk** (``fold``): the queued calls' input matrices (or feeds, for a model with named
  inputs) and predictions go to the drift window of the version that answered, joined into
  one observation per window and time bucket (``DriftWindow.observe_many``), and their
  predictions are remembered for feedback under one lock. A fold runs on the serving thread
  that queues the ``FOLD_EVERY``-th call, and before every read: the interval's batch, the
  drift summary, feedback (a request's id is known for feedback as soon as it is answered).
* **Per swap** (``on_swap``, a swap listener): a drift window is built from the bundle's
  ``reference.json`` for each model version when it starts serving, before its first request.
  Windows of versions no longer serving are kept (up to ``KEEP_VERSIONS`` per model) so their
  last counts still reach a batch.
* **Per interval** (``close_interval``, called by its own timer thread): one batch composed by
  ``BatchComposer`` and appended to the outbox, which assigns its seq and drop count.
* **On the link thread** (``pump`` as ``Link.on_tick``, ``acked`` as ``Link.on_puback``):
  pending rows are published in seq order, at most ``max_inflight`` unacknowledged at once,
  and each is deleted from the outbox on its PUBACK. Retransmission after a reconnect is
  paho's (it keeps unacknowledged QoS 1 messages and resends them, in order, with their mids);
  after a restart it is the outbox's (every unacknowledged row is still there). Delivery is
  at-least-once: the server stores each (device, seq) once.
* **End-to-end confirmation** (``confirmed``, the ``telemetry_ack`` command, on the link's
  dispatch thread): from the first confirmation the server sends on (persisted in the outbox),
  a PUBACK no longer deletes a row; the server's confirmation does, and a row unconfirmed
  ``confirm_timeout_s`` after its PUBACK is published again, with backoff
  (``agent.confirmations``). Against an older server that never confirms, the agent behaves as
  before: the PUBACK deletes.

It does not decide what the numbers mean (the server does) and holds no MQTT client: the link
is the only thing that talks to the broker. Events of the update path do not go through here
(see docs/agent.md, "Telemetry").
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agent.confirmations import Confirmations
from agent.drift import DriftError, DriftWindow
from agent.metrics import (
    Accuracy,
    BatchComposer,
    FeedbackConflictError,
    FeedbackError,
    Metrics,
    ModelKey,
)
from agent.outbox import Entry, Outbox, OutboxError
from agent.runtime import ModelSession
from agent.serving import Served, ServingTable
from edgefleet.telemetry import DEFAULT_DRIFT_EVERY, DEFAULT_INTERVAL_S, band

log = logging.getLogger("agent.reporter")

KEEP_VERSIONS = 3
# PSI of a handful of rows is noise (one row puts all its mass in one bin per feature): below
# this many rows in the window the status shows the count, not a band.
MIN_ROWS_FOR_BAND = 50
DEFAULT_MAX_INFLIGHT = 10
# Served calls queued before the serving thread folds them into the drift windows and the
# feedback memory: enough rows that the joined observation costs well under a microsecond a
# row, few enough (256 x one row of the digits model, about 200 KiB) to hold.
FOLD_EVERY = 256

Publisher = Callable[[bytes], int | None]
"""Publishes one payload at QoS 1; returns the message id whose PUBACK will come, or None."""


class Reporter:
    """Drift windows, feedback memory and the telemetry outbox of one agent. Thread-safe."""

    def __init__(self, metrics: Metrics, *, device_id: str | None = None, outbox: Outbox | None = None,
                 interval_s: float = DEFAULT_INTERVAL_S, drift_every: int = DEFAULT_DRIFT_EVERY,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT, monotonic: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, confirm_timeout_s: float | None = None) -> None:
        self.metrics = metrics
        self.outbox = outbox
        self.interval_s = interval_s
        self.max_inflight = max_inflight
        self._monotonic = monotonic
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._windows: dict[ModelKey, DriftWindow] = {}
        # Successful calls and when they were served, not folded yet (appends take no lock; a
        # fold pops exactly what it counts). Folds hold _fold_lock, so a read that folds first
        # also waits for a fold running elsewhere: it never misses a call answered before it.
        self._served: deque[tuple[Served, float]] = deque()
        self._fold_lock = threading.Lock()
        self._composer = (BatchComposer(device_id, metrics, windows=self.windows, interval_s=interval_s,
                                        drift_every=drift_every)
                          if device_id is not None and outbox is not None else None)
        # mid -> seq of rows handed to paho and not yet acknowledged; link thread only.
        self._inflight: dict[int, int] = {}
        self._more = threading.Event()  # the outbox may hold rows not yet handed to paho
        self._more.set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.acknowledged = 0
        # End-to-end confirmation: 2 intervals by default, so a server flushing every interval has
        # one whole interval of slack before a row goes out again.
        self._confirmations = Confirmations(confirm_timeout_s or 2 * interval_s)
        self._confirm_lock = threading.Lock()  # confirmations: link thread and dispatch thread
        self.confirming = outbox.confirming if outbox is not None else False
        self._cursor = 0  # the highest seq handed to the link since start (confirming mode)
        self.resent = 0
        self.confirmed_rows = 0

    def attach(self, table: ServingTable) -> None:
        """Hook metrics, drift windows and feedback memory to ``table`` (its models included)."""
        table.add_observer(self.metrics.observe)
        table.add_request_observer(self.on_request)
        table.add_swap_listener(self.on_swap)
        if self._composer is not None:
            self._composer.shadow = table.take_shadow_records  # `sh`: each candidate's shadow figures

    # -- serving hooks (request threads) ------------------------------------------------------
    def on_swap(self, name: str, session: ModelSession) -> None:
        key = (name, session.manifest.version)
        with self._lock:
            if key in self._windows:
                return  # the same version again (a reload): keep its counts
        images = {spec.name: spec.image for spec in session.manifest.inputs if spec.image is not None}
        window = DriftWindow(session.slot.reference(), images=images)
        with self._lock:
            self._windows.setdefault(key, window)
            same_model = [k for k in self._windows if k[0] == name]
            for old in same_model[:-KEEP_VERSIONS]:  # dicts keep insertion order: oldest first
                del self._windows[old]

    def on_request(self, served: Served) -> None:
        if served.outcome == "ok":
            queue = self._served
            queue.append((served, self._monotonic()))
            # Not blocking: a reader folding now takes this call too, or the next one will.
            if len(queue) >= FOLD_EVERY and self._fold_lock.acquire(blocking=False):
                try:
                    self._fold()
                finally:
                    self._fold_lock.release()
        elif served.outcome != "inference":  # inference failures reach Metrics.observe already
            self.metrics.error(served.model, served.version, served.outcome)

    def fold(self) -> None:
        """Count every call queued so far into the drift windows and the feedback memory."""
        with self._fold_lock:
            self._fold()

    def _fold(self) -> None:
        """``fold`` with ``_fold_lock`` held."""
        queue = self._served
        n = len(queue)
        if not n:
            return
        taken = [queue.popleft() for _ in range(n)]
        remembered = [(s.request_id, s.model, s.version, s.predictions) for s, _ in taken if s.predictions is not None]
        self.metrics.remember_many(remembered)
        observed: dict[ModelKey, list[tuple[Any, Any, float]]] = {}
        for served, now in taken:
            rows = served.matrix if served.matrix is not None else served.feeds  # feeds: named inputs
            if rows is not None:
                observed.setdefault((served.model, served.version), []).append((rows, served.predictions, now))
        for key, items in observed.items():
            window = self._windows.get(key)
            if window is None:
                continue
            for _index, exc in window.observe_many(items):
                # What a misfit cost before bulk counting too: that request's drift counts, logged.
                log.error("drift window of %s@%s could not count a request: %s", key[0], key[1], exc,
                          exc_info=None if isinstance(exc, DriftError) else exc)

    def feedback(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Score ground-truth labels of earlier requests (``POST /v1/feedback``): items are
        ``{"request_id", "label", "row"?}``, already checked for shape by the API.

        Every item is tried; with several, those naming a request this agent does not remember
        come back under "rejected" with the reason, as do rows labelled already (one label per
        prediction). Raises FeedbackError when none is accepted: FeedbackConflictError when every
        item was a second label.
        """
        self.fold()  # a request answered a moment ago is remembered before its label is scored
        accepted, rejected = [], []
        conflicts = 0
        for item in items:
            try:
                correct = self.metrics.feedback(item["request_id"], item["label"], row=item.get("row", 0))
            except FeedbackError as exc:
                if len(items) == 1:
                    raise
                conflicts += isinstance(exc, FeedbackConflictError)
                rejected.append({"request_id": item["request_id"], "error": exc.message})
                continue
            accepted.append({"request_id": item["request_id"], "correct": correct})
        if not accepted and conflicts == len(items):
            raise FeedbackConflictError(f"all {len(items)} feedback items label predictions that are labelled already",
                                        fix="send one label per prediction; a retried request that got an answer "
                                            "was counted")
        if not accepted:
            raise FeedbackError(f"none of the {len(items)} feedback items names a remembered request: "
                                + "; ".join(r["error"] for r in rejected[:3]),
                                fix=f"send feedback for one of the last {self.metrics.remember_limit} requests, "
                                    "with the request_id the predict API returned")
        return {"accepted": accepted, "rejected": rejected,
                "accuracy": [accuracy_document(a) for a in self.metrics.accuracies()]}

    def windows(self) -> dict[ModelKey, DriftWindow]:
        """The drift windows by model version, every call served so far counted in them."""
        self.fold()
        with self._lock:
            return dict(self._windows)

    def drift_summary(self, name: str, version: str) -> dict[str, Any] | None:
        """The worst feature PSI over the sliding window, its band and feature, and the output PSI;
        band and scores are None until the window holds ``MIN_ROWS_FOR_BAND`` rows."""
        window = self._windows.get((name, version))
        if window is None:
            return None
        self.fold()
        now = self._monotonic()
        scores = window.scores(now)
        rows = max((s.rows for s in scores), default=0)
        if rows < MIN_ROWS_FOR_BAND:
            return {"rows": rows, "band": None, "max_psi": None, "feature": None, "output_psi": None}
        worst = max(scores, key=lambda s: s.psi)
        output = window.output_score(now)
        return {"rows": rows, "band": band(worst.psi), "max_psi": round(worst.psi, 4), "feature": worst.feature,
                "output_psi": round(output.psi, 4) if output is not None and output.rows else None}

    # -- intervals ------------------------------------------------------------------------------
    def close_interval(self, now: float | None = None) -> int | None:
        """Compose the interval's batch into the outbox; its seq, or None without an outbox."""
        if self._composer is None or self.outbox is None:
            return None
        seq = self.outbox.append(self._composer.compose(self._wall() if now is None else now))
        self._more.set()
        return seq

    def start(self) -> None:
        """Close an interval every ``interval_s`` on a thread of its own."""
        if self._composer is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="edgefleet-telemetry", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = self._monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, deadline - self._monotonic())):
            # Deadlines, not sleeps of interval_s: a slow append does not stretch every interval.
            deadline += self.interval_s
            try:
                self.close_interval()
            except OutboxError:
                log.exception("cannot store the telemetry batch")

    def stop(self) -> None:
        """Stop the timer and store what the running interval counted (sent on the next start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
            try:
                self.close_interval()
            except OutboxError:
                log.exception("cannot store the last telemetry batch")

    # -- the link thread ------------------------------------------------------------------------
    def pump(self, publish: Publisher) -> int:
        """Hand pending rows to ``publish`` in seq order, keeping at most ``max_inflight``
        unacknowledged; returns how many were handed over. While confirming, rows past their
        confirmation deadline go first (again), then rows never sent since start."""
        if self.outbox is None:
            return 0
        if self.confirming:
            return self._pump_confirming(publish, self.outbox)
        if not self._more.is_set():
            return 0
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return 0
        self._more.clear()  # cleared before reading: an append racing with us sets it again
        inflight = set(self._inflight.values())
        entries = self.outbox.pending(len(inflight) + room)
        sent = self._hand_over(publish, [e for e in entries if e.seq not in inflight])
        if len(entries) == len(inflight) + room:
            self._more.set()  # the read was full: there may be more behind it
        return sent

    def _pump_confirming(self, publish: Publisher, outbox: Outbox) -> int:
        room = self.max_inflight - len(self._inflight)
        now = self._monotonic()
        with self._confirm_lock:
            late = (self._confirmations.due(now, room, skip=self._inflight.values())
                    if room > 0 and self._confirmations.any_due(now) else [])
        if room <= 0 or (not late and not self._more.is_set()):
            return 0
        entries = outbox.entries(late)
        if len(entries) < len(late):  # dropped by the cap (or confirmed meanwhile): nothing to resend
            with self._confirm_lock:
                self._confirmations.forget(set(late) - {e.seq for e in entries})
        fresh: list[Entry] = []
        if room > len(entries) and self._more.is_set():
            self._more.clear()
            fresh = outbox.pending_after(self._cursor, room - len(entries))
            if len(fresh) == room - len(entries):
                self._more.set()
        sent = self._hand_over(publish, entries + fresh)
        self.resent += min(sent, len(entries))
        return sent

    def _hand_over(self, publish: Publisher, entries: list[Entry]) -> int:
        sent = 0
        for entry in entries:
            mid = publish(entry.payload)
            if mid is None:  # paho's queue is full: try again on a later tick
                self._more.set()
                break
            self._inflight[mid] = entry.seq
            self._cursor = max(self._cursor, entry.seq)
            sent += 1
        self.published += sent
        return sent

    def acked(self, mid: int) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is None or self.outbox is None:
            return  # an event or the reported state, not ours
        self.acknowledged += 1
        if self.confirming:
            with self._confirm_lock:  # kept until the server says it stored it
                self._confirmations.sent(seq, self._monotonic())
        else:
            self.outbox.ack(seq)
        self._more.set()

    def confirmed(self, seqs: list[int]) -> int:
        """The server stored ``seqs`` (a ``telemetry_ack`` command): delete them from the outbox,
        and from now on keep every row until confirmed. Returns how many rows were deleted."""
        if self.outbox is None:
            return 0
        if not self.confirming:
            self.outbox.set_confirming()
            self.confirming = True
            log.info("the server confirms stored telemetry: batches are kept until confirmed")
        deleted = self.outbox.ack_many(seqs)
        with self._confirm_lock:
            self._confirmations.confirm(seqs)
        self.confirmed_rows += deleted
        return deleted

    def unconfirmed(self) -> int:
        """Rows the broker took that the server has not confirmed yet."""
        with self._confirm_lock:
            return len(self._confirmations)

    def stats(self) -> dict[str, Any]:
        outbox = self.outbox.stats() if self.outbox is not None else None
        return {"interval_s": self.interval_s, "in_flight": len(self._inflight), "published": self.published,
                "acknowledged": self.acknowledged, "confirming": self.confirming,
                "unconfirmed": self.unconfirmed(), "resent": self.resent, "confirmed": self.confirmed_rows,
                "outbox": None if outbox is None else {"rows": outbox.rows, "bytes": outbox.bytes,
                                                        "next_seq": outbox.next_seq,
                                                        "dropped_unreported": outbox.dropped_unreported}}


def accuracy_document(accuracy: Accuracy) -> dict[str, Any] | None:
    """Rolling accuracy as JSON; None before any label came."""
    value = accuracy.value
    if value is None:
        return None
    return {"model": accuracy.model, "version": accuracy.version, "labels": accuracy.labels,
            "correct": accuracy.correct, "accuracy": round(value, 4)}
