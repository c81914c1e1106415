"""Device presence from MQTT messages: parsing (pure) and the handler that stores it.

``parse_message`` turns one message on a device topic into a ``PresenceUpdate`` (or None when
the message says nothing about presence). A ``reported`` document with ``"online": true``
marks the device online and carries what it runs; the broker's retained last will
(``{"device_id", "online": false}``) marks it offline; any ``events`` message proves the
device is alive. A payload whose ``device_id`` disagrees with its topic is refused: the broker
ACL should already stop a device writing another's topic, and this keeps a misconfigured
broker from letting one device speak for another.

``parse_message`` is the pure part: no broker, database or clock; the time comes in as an
argument. ``PresenceIngest`` is the MQTT handler around it: it runs on paho's network thread,
only parses and queues, and its own writer thread stores the updates in batches through a
``PresenceStore`` (``fleet_server.registry.devices.Devices.record_presences``, one transaction
per batch). If the database refuses a batch for what one update holds, the batch is split until
only that update fails (``fleet_server.isolation``): the others are stored, in order, and the bad
one is dropped, counted (``counts``), logged and handed to ``on_dropped`` (the server counts it
for its device). An update that comes with an ``ack`` (the server's manual acks, issue 13: a
``reported`` message) is acked once its transaction has committed, or once it is dropped for
what it holds; while the database is unreachable the writer tries again with a backoff and
acks nothing, so the broker keeps the message. This module does not connect to the broker (``fleet_server.broker.connection``)
and does not check message schemas: the server's handler
(``fleet_server.telemetry.ingest.TelemetryIngest.handler``) does that before anything arrives here.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from edgefleet.topics import parse_device_topic
from fleet_server.backlog import Backlog
from fleet_server.isolation import is_transient, write_isolating

log = logging.getLogger(__name__)

MAX_PAYLOAD = 256 * 1024
RETRY_MAX_S = 30.0  # the longest wait between two tries of a batch the database could not take
Ack = Callable[[], None]


class PresenceMessageError(ValueError):
    """A device message is malformed; the ingest logs and drops it."""


@dataclass(frozen=True)
class PresenceUpdate:
    device_id: str
    at: datetime
    online: bool | None  # None: the message proves liveness only (an event)
    reported: Mapping[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("PresenceUpdate.at must be timezone-aware")


def parse_message(topic: str, payload: bytes, now: datetime) -> PresenceUpdate | None:
    """Interpret one message; raise PresenceMessageError if it is malformed."""
    try:
        device_id, kind = parse_device_topic(topic)
    except ValueError as exc:
        raise PresenceMessageError(str(exc)) from exc
    if kind not in ("reported", "events"):
        return None
    if len(payload) > MAX_PAYLOAD:
        raise PresenceMessageError(f"{kind} message from {device_id} is {len(payload)} bytes, over {MAX_PAYLOAD}")
    if not payload:
        return None  # an empty retained message clears the topic; it says nothing about the device
    try:
        document = json.loads(payload)
    except ValueError as exc:
        raise PresenceMessageError(f"{kind} message from {device_id} is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise PresenceMessageError(f"{kind} message from {device_id} is not a JSON object")
    claimed = document.get("device_id", device_id)
    if claimed != device_id:
        raise PresenceMessageError(f"message on {device_id}'s topic claims to be from {claimed!r}")
    if kind == "events":
        return PresenceUpdate(device_id, now, None)
    online = document.get("online")
    if not isinstance(online, bool):
        raise PresenceMessageError(f"reported message from {device_id} has no boolean 'online'")
    return PresenceUpdate(device_id, now, online, document if online else None)


# ---- the MQTT handler that stores presence ------------------------------------------------

class PresenceStore(Protocol):
    """Stores presence updates in order, in one transaction; ``fleet_server.registry.devices.Devices`` is the real one."""

    def record_presences(self, updates: Sequence[PresenceUpdate]) -> set[str]: ...


class PresenceIngest:
    """The MQTT handler that stores device presence, off paho's network thread.

    ``__call__`` (paho's thread) parses and queues; a writer thread, started with the first
    message and ended after ``idle_s`` with nothing queued (so whoever wires this needs no
    start or stop), stores up to ``max_batch`` updates per transaction. A full queue blocks
    the caller: back-pressure on the broker rather than a dropped message. ``drain`` waits
    until what was queued is stored (tests, shutdown).
    """

    def __init__(self, devices: PresenceStore, clock: Callable[[], datetime] = lambda: datetime.now(UTC), *,
                 max_batch: int = 1000, queue_size: int = 20_000, idle_s: float = 2.0,
                 on_dropped: Callable[[str, str, BaseException], None] | None = None) -> None:
        if max_batch < 1 or queue_size < 1 or idle_s <= 0:
            raise ValueError("max_batch and queue_size must be >= 1 and idle_s positive")
        self.devices = devices
        self.clock = clock
        self.max_batch = max_batch
        self.idle_s = idle_s
        self.on_dropped = on_dropped  # (device_id, topic kind, error) of an update the database refused alone
        self._queue: queue.Queue[tuple[PresenceUpdate, Ack | None]] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._backlog = Backlog()
        self._counts_lock = threading.Lock()
        self._counts = {"stored": 0, "dropped": 0}
        self._stopping = threading.Event()

    def __call__(self, topic: str, payload: bytes, ack: Ack | None = None) -> None:
        try:
            update = parse_message(topic, payload, self.clock())
        except PresenceMessageError as exc:
            log.warning("dropped MQTT message: %s", exc)
            update = None
        if update is None:
            if ack is not None:
                ack()
            return
        self._backlog.add()
        self._queue.put((update, ack))
        with self._lock:
            # Under the lock that the writer also takes before it exits on an empty queue: an
            # update is never left queued with no writer.
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="edgefleet-presence", daemon=True)
                self._thread.start()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every update queued so far is stored (or dropped); False on timeout."""
        return self._backlog.drain(timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """Drain, and give up retrying a batch the database cannot take (it stays unacked)."""
        drained = self.drain(timeout)
        self._stopping.set()
        return drained

    def counts(self) -> dict[str, int]:
        """Updates ``stored`` (taken by the store, known devices or not) and ``dropped`` since start."""
        with self._counts_lock:
            return dict(self._counts)

    def _count(self, **deltas: int) -> None:
        with self._counts_lock:
            for key, n in deltas.items():
                self._counts[key] += n

    def _run(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=self.idle_s)]
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._store(batch)

    def _store(self, entries: list[tuple[PresenceUpdate, Ack | None]]) -> None:
        batch = [update_ for update_, _ in entries]
        ignored: set[str] = set()
        stored = [0]
        acked = True

        def record(part: Sequence[PresenceUpdate]) -> None:
            accepted = self.devices.record_presences(part)
            ignored.update({u.device_id for u in part} - accepted)
            stored[0] += len(part)

        try:
            delay = 0.5
            while True:
                stored[0] = 0  # a retry writes the whole batch again, in order: the same end state
                try:
                    # Split until only the update the database refuses fails: one device's document
                    # must not cost the fleet's presence (issue 14: 137 updates lost to one).
                    for update_, error in write_isolating(batch, record):
                        self._dropped(update_, error)
                    break
                except Exception as exc:
                    if not is_transient(exc) or self._stopping.is_set():
                        raise
                    # Unreachable database: try the rest again, unacked, so the broker keeps them.
                    log.warning("storing %d presence updates failed (%s); trying again in %.1f s",
                                len(batch) - stored[0], exc, delay)
                    self._stopping.wait(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
        except Exception as exc:
            log.exception("storing %d presence updates failed; they are dropped", len(batch) - stored[0])
            self._count(dropped=len(batch) - stored[0])
            acked = not is_transient(exc)  # stopping: leave them to the broker's redelivery
        else:
            if ignored:
                log.info("messages from %d unknown or revoked device(s) ignored", len(ignored))
        finally:
            self._count(stored=stored[0])
            self._backlog.done(len(batch))
        if acked:
            for _, ack in entries:
                if ack is not None:
                    ack()

    def _dropped(self, update_: PresenceUpdate, error: BaseException) -> None:
        log.error("the database refused the presence update of %s; dropped alone: %s", update_.device_id, error)
        self._count(dropped=1)
        if self.on_dropped is not None:
            try:
                self.on_dropped(update_.device_id, "events" if update_.online is None else "reported", error)
            except Exception:  # counting must never stop the writer
                log.exception("counting a dropped presence update failed")
