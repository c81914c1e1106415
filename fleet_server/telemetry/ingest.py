"""Telemetry and event ingest: MQTT messages in, checked once, rows stored exactly once per (device, sequence).

Delivery is at-least-once end to end, and nothing is acknowledged before it is stored (issue
13). The agent's outbox publishes a batch until the broker's PUBACK (and again after a crash
before its ack). The server's connection runs with manual acks
(``FleetMqtt(manual_ack=True)``): the handler is given each message's ack, and this module
calls it only once the transaction that stores the message has committed (telemetry and
events here; a ``reported`` message once presence has stored it), or once the message is
refused for good (a failed check, an unknown device). A server killed with messages queued
therefore loses none: the broker still holds them as in flight on the server's persistent
session and delivers them again when it reconnects. So the same batch can arrive twice (a
re-sent outbox row, a redelivery after a crash) and the database decides:
``telemetry_batches`` has a unique (device_id, seq), ``device_events`` a unique (device_id,
event_id), and every insert is ``INSERT ... ON CONFLICT DO NOTHING``. Two replicas sharing the
load through a ``$share/edgefleet/...`` subscription, a restart, or a duplicate sent on purpose
therefore all end as one row. While the database is unreachable the writer retries the same
write with a backoff and acks nothing: its queue fills, the handler blocks, and the broker
holds the rest. The outbox's ``dropped`` field counts only what the device dropped.

Confirmation (``on_committed``): a broker's PUBACK to the device says only that the broker has
the batch, and a broker can lose what it acknowledged (a Mosquitto killed with messages in
memory, a NATS stream leader killed while the MQTT gateway had already acked). So after each
commit the writer hands ``on_committed`` the seqs of every known device's batches in that write
(first copies, duplicates, and rows the database refused for good): the server publishes them
to the devices as ``telemetry_ack`` commands (``fleet_server.telemetry.acks``), one per device
per write, and an agent keeps each batch until it is confirmed (docs/telemetry.md "Store and
forward"). Batches refused by the checks and those of unknown devices are not confirmed.

The server's own liveness probes (``fleet_server.telemetry.liveness``) arrive on a device topic
its subscription covers; they are acked and go nowhere else. Every other message is counted
by kind (``counts().by_kind``: the per-replica ``edgefleet_device_messages_total{kind}``), and
the time of the last one is kept for the silence check.

One device cannot hurt the others (issue 14). ``handler(others)`` is the server's one MQTT
handler: every device message is checked by ``fleet_server.telemetry.validation`` before it is
queued, and a refused one is counted (``refusals``) and goes nowhere: not to the writer, not to
presence (``others``), not to the rollout engine. ``events`` and ``reported`` are checked on
paho's thread (they are small and rare); ``telemetry`` is checked by the writer when it decodes
the batch, still before any insert, because decoding on paho's thread made it the bottleneck
(below). Should the database refuse a row anyway, the writer splits the write until only that
row fails (``fleet_server.isolation``): it alone is dropped, counted (``store_failed``) and logged.

Throughput: the MQTT callback only routes and queues the raw bytes (paho's one network thread,
which also sends the PUBACKs, was the bottleneck while it decoded each batch); one writer thread
lingers up to ``linger_s`` to fill a batch, decodes and checks, and inserts up to ``max_batch``
batches in one transaction (multi-row inserts with RETURNING, so the duplicates are counted
exactly). A full queue blocks the callback, which stops paho reading and pushes back on the
broker instead of dropping.

Pure helpers (``batch_rows``, ``event_row``) turn checked messages into rows; ``TelemetryIngest``
owns the queue, the thread and the counters that ``/metrics`` reads. This module does not
compute drift or views (``fleet_server.telemetry.views``) and does not track presence
(``fleet_server.registry.presence.PresenceIngest``).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import JSON, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from edgefleet import topics
from edgefleet.telemetry import ModelRecord, ReferenceProfile, TelemetryBatch
from fleet_server.backlog import Backlog
from fleet_server.db import Database
from fleet_server.errors import ServerError
from fleet_server.isolation import is_transient, write_isolating
from fleet_server.tables import DeviceEventRow, DeviceRow, TelemetryBatchRow, TelemetryRecordRow
from fleet_server.telemetry.liveness import is_probe
from fleet_server.telemetry.refusals import FaultCounter, store_faults
from fleet_server.telemetry.shadow import shadow_rows, store_shadow
from fleet_server.telemetry.validation import (
    DEFAULT_LIMITS,
    STORE_FAILED,
    Fault,
    IngestError,
    Limits,
    References,
    Refused,
    check_batch,
    check_event,
    check_reported,
    decode_telemetry,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 1000
DEFAULT_QUEUE_SIZE = 50_000
DEFAULT_LINGER_S = 0.05  # how long the writer waits to fill a batch once one message is queued
RATE_WINDOW_S = 60
MAX_EVENT_BYTES = DEFAULT_LIMITS.event_bytes
RETRY_MAX_S = 30.0  # the longest wait between two tries of a write the database could not take
FAULT_LOG_EVERY_S = 60.0  # one warning per device, topic and reason a minute: a hostile device must not flood the log

__all__ = ["Ack", "Consumer", "IngestCounts", "IngestError", "TelemetryIngest", "batch_rows", "event_row",
           "route_telemetry"]

Ack = Callable[[], None]


class Consumer(Protocol):
    """A handler that may take the message's ack (``PresenceIngest``): it then calls it once stored."""

    def __call__(self, topic: str, payload: bytes, ack: Ack | None = None) -> None: ...


# ---- pure: checked messages to rows ------------------------------------------------------------

def batch_rows(batch: TelemetryBatch, received_at: datetime, *,
               at: datetime | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``telemetry_batches`` row and the ``telemetry_records`` rows of one checked batch.

    ``at`` is the time to store it at (``CheckedBatch.at``: the batch's own, or the server's when
    the device's clock was ahead); by default the batch's ``ts``.
    """
    at = at if at is not None else datetime.fromtimestamp(batch.ts, UTC)
    res = batch.resource
    head = {"device_id": batch.device_id, "seq": batch.seq, "ts": at, "interval_s": batch.interval_s,
            "dropped": batch.dropped, "cpu_percent": res.cpu_percent, "rss_bytes": res.rss_bytes,
            "temperature_c": res.temperature_c, "received_at": received_at}
    records = [{
        "device_id": batch.device_id, "seq": batch.seq, "model": m.model, "version": m.version, "ts": at,
        "count": m.count, "errors": dict(m.errors),
        "p50_ms": m.latency.p50 if m.latency else None, "p95_ms": m.latency.p95 if m.latency else None,
        "p99_ms": m.latency.p99 if m.latency else None, "outputs": list(m.outputs),
        "drift": [list(f) for f in m.drift], "feedback_labels": m.feedback.labels,
        "feedback_correct": m.feedback.correct,
    } for m in batch.models]
    return head, records


def event_row(device_id: str, payload: bytes, now: datetime | None = None) -> dict[str, Any]:
    """The ``device_events`` row of one ``events`` message (docs/contracts.md); ``Refused`` (an
    IngestError) if it breaks the schema. ``now`` clamps a timestamp too far ahead."""
    return check_event(device_id, payload, now).row


# ---- counters ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class IngestCounts:
    """A snapshot of the ingest counters since start (for /metrics and tests).

    ``invalid`` counts telemetry and events refused by the checks; ``faults`` every refused or
    flagged message by (topic, reason), ``reported`` and ``store_failed`` included.
    """

    received: int
    stored: int
    duplicates: int
    invalid: int
    unknown_device: int
    device_dropped: int
    events_stored: int
    events_duplicate: int
    queued: int
    rate_per_s: float
    faults: Mapping[tuple[str, str], int] = field(default_factory=dict)
    by_kind: Mapping[str, int] = field(default_factory=dict)  # device messages taken, by topic kind
    acks_sent: int = 0  # telemetry_ack commands published (on_committed)


class _Counters:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.values = dict.fromkeys(("received", "stored", "duplicates", "invalid", "unknown_device",
                                     "device_dropped", "events_stored", "events_duplicate", "acks_sent"), 0)
        self.by_kind = dict.fromkeys(topics.DEVICE_TO_SERVER, 0)
        self.recent: deque[tuple[float, int]] = deque()  # (second, batches stored in it)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for key, n in deltas.items():
                self.values[key] += n
            stored = deltas.get("stored", 0)
            if stored:
                second = float(int(self.clock()))
                if self.recent and self.recent[-1][0] == second:
                    self.recent[-1] = (second, self.recent[-1][1] + stored)
                else:
                    self.recent.append((second, stored))

    def rate(self) -> float:
        with self.lock:
            horizon = self.clock() - RATE_WINDOW_S
            while self.recent and self.recent[0][0] < horizon:
                self.recent.popleft()
            return sum(n for _, n in self.recent) / RATE_WINDOW_S


class _ReferenceCache:
    """Reference profiles by (model, version) for the drift-shape check, looked up once.

    A version's reference never changes, so a profile is kept (the last ``size``); an unknown
    version is asked again after ``retry_s``, since it may be pushed after its devices report.
    Only the writer thread calls it.
    """

    def __init__(self, lookup: References, monotonic: Callable[[], float], *, size: int = 256,
                 retry_s: float = 60.0) -> None:
        self.lookup = lookup
        self.monotonic = monotonic
        self.size = size
        self.retry_s = retry_s
        self._known: OrderedDict[tuple[str, str], tuple[float, ReferenceProfile | None]] = OrderedDict()

    def __call__(self, model: str, version: str) -> ReferenceProfile | None:
        key = (model, version)
        hit = self._known.get(key)
        now = self.monotonic()
        if hit is not None and (hit[1] is not None or now - hit[0] < self.retry_s):
            self._known.move_to_end(key)
            return hit[1]
        try:
            reference = self.lookup(model, version)
        except Exception:  # a broken bundle must not stop the ingest; the shape is then not checked
            log.exception("reading the reference profile of %s@%s failed", model, version)
            reference = None
        self._known[key] = (now, reference)
        self._known.move_to_end(key)
        while len(self._known) > self.size:
            self._known.popitem(last=False)
        return reference


# ---- the writer -------------------------------------------------------------------------------

def _insert_ignoring_duplicates(session: Session, table: Any, rows: Sequence[Mapping[str, Any]],
                                key: Sequence[str]) -> list[tuple[Any, ...]]:
    """``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING key``: the keys returned are the rows stored.

    On PostgreSQL the rows travel as one array per column through ``unnest``: a single short
    statement whatever the batch size. (A multi-row VALUES list of 1,000 rows spends most of its
    time in psycopg re-parsing a statement with 10,000 placeholders: 3,700 against 12,000+
    batches/s measured.) SQLite, the embedded single-node default, takes the dialect's insert.
    """
    if not rows:
        return []
    if session.get_bind().dialect.name != "postgresql":
        insert = sqlite.insert(table).on_conflict_do_nothing(index_elements=list(key))
        return [tuple(r) for r in session.execute(insert.returning(*(table.c[k] for k in key)),
                                                  [dict(r) for r in rows])]
    columns = list(rows[0])
    dialect = postgresql.dialect()
    arrays: dict[str, list[Any]] = {}
    casts = []
    for i, name in enumerate(columns):
        sql_type = table.c[name].type
        is_json = isinstance(sql_type, JSON)
        arrays[f"c{i}"] = [json.dumps(r[name]) if is_json else r[name] for r in rows]
        casts.append(f"CAST(:c{i} AS {'JSON' if is_json else sql_type.compile(dialect=dialect)}[])")
    names = ", ".join(columns)
    statement = text(f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({', '.join(casts)}) "
                     f"ON CONFLICT ({', '.join(key)}) DO NOTHING RETURNING {', '.join(key)}")
    return [tuple(r) for r in session.execute(statement, arrays)]


@dataclass
class _Unit:
    """One checked message to store: a batch (its head and records) or an event."""

    device_id: str
    topic: str  # "telemetry" | "events"
    rows: tuple[dict[str, Any], list[dict[str, Any]]] | None = None
    event: dict[str, Any] | None = None
    dropped: int = 0
    records: tuple[ModelRecord, ...] = ()
    shadow: list[dict[str, Any]] = field(default_factory=list)  # shadow_records rows (issue 18)


@dataclass
class _Stored:
    batches: int = 0
    device_dropped: int = 0
    events: int = 0
    records: list[ModelRecord] = field(default_factory=list)


# ("telemetry", (device_id, payload bytes), ack) | ("event", row dict, ack) | ("fault", Fault, None)
_Item = tuple[str, Any, Ack | None]


@dataclass
class _Prepared:
    """One write's messages, decoded and checked: what ``_commit`` stores (and may store again)."""

    batches: dict[tuple[str, int], _Unit]
    events: dict[tuple[str, str], _Unit]
    faults: list[Fault]
    in_flight_duplicates: int
    events_in_flight_duplicates: int
    now: datetime


def _ack_all(items: Sequence[_Item]) -> None:
    for _kind, _value, ack in items:
        if ack is not None:
            ack()


class TelemetryIngest:
    """The MQTT handler for device messages, and the thread that stores telemetry and events.

    ``handler(others)`` is the whole server's handler (checks every message, hands the accepted
    ``reported`` and ``events`` to ``others``); ``ingest(topic, payload)`` takes ``telemetry`` and
    ``events`` alone. Either may be called from paho's thread; with an ``ack`` (manual acks) it is
    called once the message is stored or refused for good, never before. ``start``/``stop`` run the writer;
    ``drain(timeout)`` waits until everything queued so far is committed (tests, shutdown).
    ``references(model, version)`` gives the reference profile the drift shapes are checked
    against (``FleetViews.reference``); without it they are not. ``on_stored(records)`` is called
    on the writer thread with the model records of the batches just committed, first copies only
    (the per-model counters of ``/metrics``). ``on_committed(seqs by device)`` is called on the
    writer thread after each commit with the telemetry seqs to confirm, and returns how many
    messages it sent (``acks_sent``); it must be quick and never block on the broker.
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 max_batch: int = DEFAULT_MAX_BATCH, queue_size: int = DEFAULT_QUEUE_SIZE,
                 linger_s: float = DEFAULT_LINGER_S, monotonic: Callable[[], float] = time.monotonic,
                 limits: Limits = DEFAULT_LIMITS, references: References | None = None,
                 on_stored: Callable[[Sequence[ModelRecord]], None] | None = None,
                 on_committed: Callable[[Mapping[str, list[int]]], int] | None = None) -> None:
        if db.engine.dialect.name not in ("postgresql", "sqlite"):
            raise IngestError(f"telemetry ingest needs PostgreSQL or SQLite, not {db.engine.dialect.name}")
        self.db = db
        self.clock = clock
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.limits = limits
        self.faults = FaultCounter()
        self.on_stored = on_stored
        self.on_committed = on_committed
        self._references: References = (_ReferenceCache(references, monotonic) if references is not None
                                         else lambda _model, _version: None)
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_size)
        self._counters = _Counters(monotonic)
        self._monotonic = monotonic
        self._logged: dict[tuple[str, str, str], float] = {}
        self._thread = threading.Thread(target=self._run, name="edgefleet-ingest", daemon=True)
        self._backlog = Backlog()
        self._stopping = threading.Event()
        # time.monotonic() of the last device message taken (probes excluded): the silence check.
        self.last_message_at: float | None = None

    # paho's thread
    def __call__(self, topic: str, payload: bytes, ack: Ack | None = None) -> None:
        self.ingest(topic, payload, ack)

    def ingest(self, topic: str, payload: bytes, ack: Ack | None = None) -> None:
        """Queue one ``telemetry`` message (checked by the writer), or check and queue one ``events``
        message (a ``reported`` one is checked, and stored by presence, not here: acked at once)."""
        if self._take(topic, payload, ack) == "reported" and ack is not None:
            ack()

    def handler(self, others: Callable[[str, bytes], None], *,
                presence: Consumer | None = None) -> Callable[[str, bytes, Ack | None], None]:
        """The server's MQTT handler: ``telemetry`` to this ingest alone; ``events`` and ``reported``
        checked here, then (if accepted) to ``presence`` and ``others`` (the rollout worker), events
        also queued for storing. A refused message goes nowhere. Nothing else is subscribed to.

        With acks (``FleetMqtt(manual_ack=True)``): telemetry and events are acked by the writer after
        their commit, a ``reported`` message by ``presence`` once it has stored it (at once without
        ``presence``), a refused message at once.
        """
        def handle(topic: str, payload: bytes, ack: Ack | None = None) -> None:
            taken = self._take(topic, payload, ack)
            if taken is None:
                return
            if presence is not None:
                # Only a reported message waits for presence's commit; an event's liveness may be lost.
                presence(topic, payload, ack if taken == "reported" else None)
            elif taken == "reported" and ack is not None:
                ack()
            others(topic, payload)

        return handle

    def _take(self, topic: str, payload: bytes, ack: Ack | None) -> str | None:
        """Queue or check one message. The kind of an ``events`` or ``reported`` message that passed
        its checks (the ones others may act on: its ack is theirs, or, for an event, the writer's);
        None for the rest, whose ack is the writer's (telemetry) or done here (refused, a probe)."""
        try:
            device_id, kind = topics.parse_device_topic(topic)
        except ValueError:
            if ack is not None:
                ack()
            return None
        if is_probe(device_id):  # our own liveness probe: it arrived, which was its whole job
            if ack is not None:
                ack()
            return None
        self.last_message_at = self._monotonic()
        if kind == "telemetry":
            self._counters.add(received=1)
            self._counters.by_kind[kind] += 1  # (paho's thread alone writes by_kind)
            self._put(("telemetry", (device_id, payload), ack))  # decoded and checked by the writer
            return None
        if kind in self._counters.by_kind:
            self._counters.by_kind[kind] += 1
        accepted = (self._accept_event(device_id, payload, ack) if kind == "events"
                    else kind == "reported" and self._accept_reported(device_id, payload))
        if not accepted:
            if ack is not None:
                ack()
            return None
        return kind

    def store_failed(self, device_id: str, topic: str, error: BaseException) -> None:
        """Count a message the database refused after it passed the checks (presence's writer calls this)."""
        self.refuse(Fault(device_id, topic, STORE_FAILED, f"{type(error).__name__}: {error}"))

    def refuse(self, fault: Fault) -> None:
        """Count ``fault`` now and queue it for its device's ``device_refusals`` row (any thread)."""
        self._note(fault)
        self._put(("fault", fault, None))

    def _accept_event(self, device_id: str, payload: bytes, ack: Ack | None = None) -> bool:
        try:
            checked = check_event(device_id, payload, self.clock(), self.limits)
        except Refused as exc:
            self._counters.add(invalid=1)
            self.refuse(exc.fault)
            return False
        if checked.flag is not None:
            self.refuse(checked.flag)
        self._put(("event", checked.row, ack))
        return True

    def _accept_reported(self, device_id: str, payload: bytes) -> bool:
        try:
            check_reported(device_id, payload, self.limits)
        except Refused as exc:
            self.refuse(exc.fault)
            return False
        return True

    def _put(self, item: _Item) -> None:
        self._backlog.add()
        self._queue.put(item)  # blocks when full: back-pressure on the broker, not a silent drop

    def _note(self, fault: Fault) -> None:
        """Count a fault for /metrics and log it, once a minute per device, topic and reason."""
        self.faults.add(fault)
        key = (fault.device_id, fault.topic, fault.reason)
        now = self._monotonic()
        if now - self._logged.get(key, -FAULT_LOG_EVERY_S) >= FAULT_LOG_EVERY_S:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[key] = now
            log.warning("%s %s message from %s: %s (%s)", "refused" if fault.refused else "flagged", fault.topic,
                        fault.device_id, fault.detail, fault.reason)

    def start(self) -> TelemetryIngest:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()  # a write retrying against an unreachable database gives up, unacked
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def saturated(self) -> bool:
        """Whether the queue is full: the handler blocks, and paho reads nothing until the writer catches up."""
        return self._queue.full()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every message queued so far is stored (or refused); False on timeout."""
        return self._backlog.drain(timeout)

    def counts(self) -> IngestCounts:
        with self._counters.lock:
            values = dict(self._counters.values)
        return IngestCounts(**values, queued=self._queue.qsize(), rate_per_s=self._counters.rate(),
                            faults=self.faults.snapshot(), by_kind=dict(self._counters.by_kind))

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            # Linger a moment for more: a write costs about the same for 10 messages as for 1,000,
            # and writing each trickle at once took the GIL from paho's thread, which then read
            # fewer messages, which made the writes smaller still (2,500 msgs/s instead of 9,000).
            deadline = time.monotonic() + self.linger_s
            while len(items) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._write_safely(items)
                    return
                items.append(nxt)
            self._write_safely(items)

    def _write_safely(self, items: list[_Item]) -> None:
        """Store ``items`` and ack them; while the database is unreachable, try again (acking nothing)."""
        try:
            prepared = self._prepare(items)
            delay = 0.5
            while True:
                try:
                    self._commit(prepared)
                    break
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    if self._stopping.is_set():
                        # Not acked: the broker delivers these again to the next start.
                        log.warning("stopping with %d telemetry/event messages unstored; the broker keeps them",
                                    len(items))
                        return
                    log.warning("storing %d telemetry/event messages failed (%s); trying again in %.1f s",
                                len(items), exc, delay)
                    self._stopping.wait(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
        except (SQLAlchemyError, ServerError):
            # A failure that is not about the connection, nor about one row (those are isolated
            # by _commit): acked and dropped, since the same write would fail again at every redelivery.
            log.exception("storing %d telemetry/event messages failed; they are dropped", len(items))
        except Exception:  # a bug here must not end the one writer thread: later batches still matter
            log.exception("unexpected error storing %d telemetry/event messages; they are dropped", len(items))
        finally:
            self._backlog.done(len(items))
        _ack_all(items)

    def _check(self, device_id: str, payload: bytes, now: datetime, faults: list[Fault]) -> _Unit | None:
        """Decode and check one telemetry payload; the unit to store, or None (the fault is noted)."""
        try:
            checked = check_batch(decode_telemetry(device_id, payload), now, self.limits, self._references)
        except Refused as exc:
            self._counters.add(invalid=1)
            self._note(exc.fault)
            faults.append(exc.fault)
            return None
        if checked.flag is not None:
            self._note(checked.flag)
            faults.append(checked.flag)
        rows = batch_rows(checked.batch, now, at=checked.at)
        return _Unit(device_id, "telemetry", rows, dropped=checked.batch.dropped, records=checked.batch.models,
                     shadow=shadow_rows(checked.batch, rows[0]["ts"]))

    def _write(self, items: Sequence[_Item]) -> None:
        """Check and store ``items`` once (no retry, no acks): tests and benchmarks of the writer."""
        self._commit(self._prepare(items))

    def _prepare(self, items: Sequence[_Item]) -> _Prepared:
        """Decode and check every message of one write (each refusal counted once, here)."""
        now = self.clock()
        faults: list[Fault] = []
        batches: dict[tuple[str, int], _Unit] = {}
        events: dict[tuple[str, str], _Unit] = {}
        received = events_received = 0
        for kind, value, _ack in items:
            if kind == "telemetry":
                device_id, payload = value
                unit = self._check(device_id, payload, now, faults)
                if unit is not None and unit.rows is not None:
                    received += 1
                    batches.setdefault((unit.device_id, unit.rows[0]["seq"]), unit)
            elif kind == "event":
                events_received += 1
                events.setdefault((value["device_id"], value["event_id"]), _Unit(value["device_id"], "events",
                                                                                   event=value))
            else:
                faults.append(value)
        # A duplicate inside one write never reaches the database; count it here.
        return _Prepared(batches, events, faults, received - len(batches), events_received - len(events), now)

    def _commit(self, prepared: _Prepared) -> None:
        """Store one prepared write. Raises if the database is unreachable; a retry then stores again
        what a first half may have stored already, which the inserts' ON CONFLICT make harmless."""
        batches, events, now = prepared.batches, prepared.events, prepared.now
        faults = list(prepared.faults)
        in_flight_duplicates = prepared.in_flight_duplicates
        events_in_flight_duplicates = prepared.events_in_flight_duplicates
        ids = {d for d, _ in batches} | {d for d, _ in events} | {f.device_id for f in faults}
        with self.db.session() as session:
            known = set(session.scalars(select(DeviceRow.id).where(DeviceRow.id.in_(ids),
                                                                   DeviceRow.status == "enrolled"))) if ids else set()
        unknown = [k for k in batches if k[0] not in known]
        units = [u for k, u in batches.items() if k[0] in known] + [u for k, u in events.items() if k[0] in known]
        totals = _Stored()

        def store(part: Sequence[_Unit]) -> None:
            stored = self._store(part)  # counted only once its transaction has committed
            totals.batches += stored.batches
            totals.device_dropped += stored.device_dropped
            totals.events += stored.events
            if self.on_stored is not None and stored.records:
                try:
                    self.on_stored(stored.records)
                except Exception:  # counting for /metrics must never lose a write
                    log.exception("counting %d stored records failed", len(stored.records))

        # A row the database refuses (it passed the checks: a gap in them) costs only itself.
        failed = write_isolating(units, store)
        for unit, error in failed:
            key = unit.rows[0]["seq"] if unit.rows is not None else (unit.event or {}).get("event_id")
            log.error("the database refused %s message %r of %s; dropped alone: %s", unit.topic, key,
                      unit.device_id, error)
            fault = Fault(unit.device_id, unit.topic, STORE_FAILED, f"{type(error).__name__}: {error}")
            self._note(fault)
            faults.append(fault)
        if unknown:
            log.info("telemetry from %d unknown or revoked device(s) ignored", len({d for d, _ in unknown}))
        failed_batches = sum(1 for unit, _ in failed if unit.rows is not None)
        known_events = sum(1 for k in events if k[0] in known)
        self._counters.add(
            stored=totals.batches,
            duplicates=len(batches) - len(unknown) - failed_batches - totals.batches + in_flight_duplicates,
            unknown_device=len(unknown), device_dropped=totals.device_dropped, events_stored=totals.events,
            events_duplicate=known_events - (len(failed) - failed_batches) - totals.events
            + events_in_flight_duplicates)
        self._store_faults([f for f in faults if f.device_id in known], now)
        if self.on_committed is not None:
            done: dict[str, list[int]] = {}
            for device_id, seq in batches:
                if device_id in known:
                    done.setdefault(device_id, []).append(seq)
            if done:
                try:
                    self._counters.add(acks_sent=self.on_committed(done))
                except Exception:  # a lost confirmation costs a resend; it must never cost the write
                    log.exception("confirming the telemetry of %d device(s) failed", len(done))

    def _store(self, units: Sequence[_Unit]) -> _Stored:
        """One transaction: the batches (heads, then the records of the first copies) and the events."""
        heads = [u.rows[0] for u in units if u.rows is not None]
        with self.db.session() as session:
            stored = {(r[0], r[1]) for r in _insert_ignoring_duplicates(
                session, TelemetryBatchRow.__table__, heads, ("device_id", "seq"))}
            # Only the first copy's records: a duplicate batch adds nothing, and the unique key on
            # records would refuse its rows anyway.
            records = [rec for u in units if u.rows is not None and (u.device_id, u.rows[0]["seq"]) in stored
                       for rec in u.rows[1]]
            _insert_ignoring_duplicates(session, TelemetryRecordRow.__table__, records,
                                        ("device_id", "seq", "model", "version"))
            store_shadow(session, [r for u in units if u.rows is not None and (u.device_id, u.rows[0]["seq"]) in stored
                                   for r in u.shadow])
            events = len(_insert_ignoring_duplicates(session, DeviceEventRow.__table__,
                                                     [u.event for u in units if u.event is not None],
                                                     ("device_id", "event_id")))
        first = [u for u in units if u.rows is not None and (u.device_id, u.rows[0]["seq"]) in stored]
        return _Stored(len(stored), sum(u.dropped for u in first), events, [r for u in first for r in u.records])

    def _store_faults(self, faults: Sequence[Fault], now: datetime) -> None:
        if not faults:
            return
        try:
            with self.db.session() as session:
                store_faults(session, faults, now)
        except SQLAlchemyError:  # the counts in /metrics still have them; the device view misses them
            log.exception("storing %d refusal counts failed", len(faults))


# ---- the MQTT side ------------------------------------------------------------------------

def route_telemetry(ingest: Callable[[str, bytes], None],
                    others: Callable[[str, bytes], None]) -> Callable[[str, bytes], None]:
    """An MQTT handler sending ``telemetry`` to the ingest alone (the busiest topic skips the
    presence and rollout handlers, which ignore it) and everything else to ``others``, unchecked.

    For a replica that stores telemetry only (tests of the ingest); the server uses
    ``TelemetryIngest.handler``, which checks every message first. The connection must
    subscribe to ``telemetry`` too: ``FleetMqtt(..., kinds=DEVICE_TO_SERVER)``.
    """
    suffix = "/telemetry"

    def handle(topic: str, payload: bytes) -> None:
        if topic.endswith(suffix):
            ingest(topic, payload)
        else:
            others(topic, payload)

    return handle
