"""Publishing a device's ``desired`` again when it reports an older assignment than the latest issued.

Why: what is published to ``devices/{id}/desired`` while the device's SUBSCRIBE waits reaches it
neither way. The broker takes the retained messages for a subscription when the SUBSCRIBE
arrives, and on a NATS cluster the JetStream consumer behind it delivers only what is
published once it exists, seconds later in a connect burst (docs/deployment.md "The consumer
limit"). A device that stays connected afterwards never hears of that assignment.

How: the device's ``reported`` document names the counter of the last assignment it accepted
(``assignment_counter``, docs/contracts.md), and the agent publishes it again once its
subscription to ``desired`` is granted on a fresh session or after a refusal. When that counter
is below the latest this server issued to the device, the server publishes the stored latest
envelope again (``Assignments.republish``: the same bytes, retained, the same race check as
every publish). The device takes it, or drops it as the duplicate of what it holds.

Bounded per device: a token bucket (``ResendLimit``, by default 2 re-sends at once and one more
every 10 s), so a hostile or looping device that reports an old counter again and again costs
the server one publish per 10 s, and no database read while it has no token. The burst of 2
covers the agent's two reports of one connect (at the CONNACK and after the SUBACK) when a
broker handles the first before the subscription holds. The buckets live in this replica's
memory (replicas sharing the ingest each keep their own: N replicas allow N times the rate);
a restart refills them.

``decide`` is the pure part: no broker, database or clock. ``DesiredResender`` is the thin I/O
around it: the server's MQTT handler (``submit``, on paho's thread: it parses and queues), and a
thread that reads the latest counters of a batch in one query and publishes. This module does
not issue or sign assignments (``fleet_server.rollouts.assignments``); a device whose report has
no ``assignment_counter`` (an agent from before it) is never re-sent anything.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edgefleet import topics

log = logging.getLogger(__name__)

__all__ = ["DesiredResender", "ResendCollector", "ResendCounts", "ResendLimit", "Tokens", "decide", "has_token",
           "reported_counter"]

REPORTED_COUNTER = "assignment_counter"  # the key of docs/contracts.md's reported document
_EPSILON = 1e-9  # a token refilled "exactly" one interval later must count, whatever the float rounding
MAX_TRACKED = 100_000  # devices whose bucket is kept; the least recently seen are forgotten (refilled)


@dataclass(frozen=True)
class ResendLimit:
    """At most ``burst`` re-sends at once to one device, and one more every ``every_s`` seconds."""

    burst: int = 2
    every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.burst < 1 or self.every_s <= 0:
            raise ValueError("a resend limit needs burst >= 1 and every_s > 0")


@dataclass(frozen=True)
class Tokens:
    """One device's bucket: ``level`` re-sends available at time ``at`` (monotonic seconds)."""

    level: float
    at: float

    def now(self, now: float, limit: ResendLimit) -> float:
        """The level at ``now``: refilled at one token per ``every_s``, up to ``burst``."""
        return min(float(limit.burst), self.level + max(0.0, now - self.at) / limit.every_s)


def reported_counter(document: object) -> int | None:
    """The assignment counter a ``reported`` document names; None if it names none (an older agent,
    a last will, a value that is not a non-negative integer)."""
    if not isinstance(document, dict) or document.get("online") is not True:
        return None
    counter = document.get(REPORTED_COUNTER)
    if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
        return None
    return counter


def has_token(tokens: Tokens | None, now: float, limit: ResendLimit) -> bool:
    """Whether a re-send would be allowed now (checked before reading the database)."""
    return tokens is None or tokens.now(now, limit) >= 1.0 - _EPSILON


def decide(reported: int, latest: int | None, tokens: Tokens | None, now: float,
           limit: ResendLimit) -> tuple[bool, Tokens | None]:
    """Re-send ``desired`` to a device that reports holding assignment ``reported``?

    ``latest`` is the counter of the newest assignment issued to it (None: never assigned),
    ``tokens`` its bucket (None: full). Yes when it is behind and has a token; the bucket after.
    A device at or past the latest (it reports what it accepted, so past means another replica
    issued one we have not read yet) is never re-sent anything, and costs no token.
    """
    if latest is None or reported >= latest or not has_token(tokens, now, limit):
        return False, tokens
    level = tokens.now(now, limit) if tokens is not None else float(limit.burst)
    return True, Tokens(max(0.0, level - 1.0), now)


# ---- I/O: the handler, its thread and the database ---------------------------------------

class Republisher(Protocol):
    """What the resender needs of ``fleet_server.rollouts.assignments.Assignments``."""

    def latest_counters(self, device_ids: Sequence[str]) -> dict[str, int]: ...

    def republish(self, device_ids: Sequence[str]) -> list[str]: ...


@dataclass
class ResendCounts:
    """Since start: reports handled, devices re-sent their ``desired``, reports that asked while out of
    tokens, reports dropped because the queue was full (the device's next report asks again)."""

    reports: int = 0
    resent: int = 0
    limited: int = 0
    dropped: int = 0
    failed: int = 0  # re-sends the broker did not confirm (the device's next report asks again)


class DesiredResender:
    """``submit`` is an MQTT handler (paho's thread: parse, queue); ``start``/``stop`` its thread."""

    def __init__(self, assignments: Republisher, *, limit: ResendLimit | None = None,
                 monotonic: Callable[[], float] = time.monotonic, queue_size: int = 20_000,
                 max_tracked: int = MAX_TRACKED) -> None:
        self.assignments = assignments
        self.limit = limit or ResendLimit()
        self.monotonic = monotonic
        self.max_tracked = max_tracked
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue(maxsize=queue_size)
        self._buckets: OrderedDict[str, Tokens] = OrderedDict()  # the writer thread's alone
        self._counts = ResendCounts()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="edgefleet-desired-resend", daemon=True)

    def submit(self, topic: str, payload: bytes) -> None:
        """Queue a ``reported`` message that names an assignment counter; anything else is ignored."""
        try:
            device_id, kind = topics.parse_device_topic(topic)
        except ValueError:
            return
        # Every report comes through here on paho's thread, and the ingest has already parsed it:
        # only one that names the key is parsed again (a byte search costs far less than JSON).
        if kind != "reported" or REPORTED_COUNTER.encode() not in payload:
            return
        try:
            counter = reported_counter(json.loads(payload))
        except ValueError:
            return  # the ingest's checks have already refused and counted it
        if counter is None:
            return
        try:
            self._queue.put_nowait((device_id, counter))
        except queue.Full:  # never block paho's thread for this: the device's next report asks again
            self._count(dropped=1)

    def start(self) -> DesiredResender:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def counts(self) -> ResendCounts:
        with self._lock:
            c = self._counts
            return ResendCounts(c.reports, c.resent, c.limited, c.dropped, c.failed)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, n in deltas.items():
                setattr(self._counts, key, getattr(self._counts, key) + n)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            batch = [item]
            while len(batch) < 1000:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            try:
                self.handle(batch)
            except Exception:  # a database or broker hiccup: the device's next report asks again
                log.exception("re-sending desired to %d reporting device(s) failed", len(batch))

    def handle(self, reports: Sequence[tuple[str, int]]) -> list[str]:
        """Decide and re-send for one batch of (device, reported counter); the devices re-sent."""
        now = self.monotonic()
        reported: dict[str, int] = {}
        for device_id, counter in reports:  # the last report of a device wins
            reported[device_id] = counter
        asking = {d: c for d, c in reported.items() if has_token(self._buckets.get(d), now, self.limit)}
        limited = len(reported) - len(asking)
        latest = self.assignments.latest_counters(sorted(asking)) if asking else {}
        chosen = []
        for device_id, counter in asking.items():
            send, tokens = decide(counter, latest.get(device_id), self._buckets.get(device_id), now, self.limit)
            if send and tokens is not None:
                chosen.append(device_id)
                self._remember(device_id, tokens)
        failed = self.assignments.republish(sorted(chosen)) if chosen else []
        if chosen:
            log.info("published desired again to %d device(s) whose reported assignment is older than the latest "
                     "issued (a desired published while their SUBSCRIBE waited was lost to them): %s",
                     len(chosen), ", ".join(sorted(chosen)[:10]) + (" ..." if len(chosen) > 10 else ""))
        if limited:
            log.debug("%d device(s) reported an old assignment again within the resend limit", limited)
        self._count(reports=len(reports), resent=len(chosen) - len(failed), failed=len(failed), limited=limited)
        return sorted(chosen)

    def _remember(self, device_id: str, tokens: Tokens) -> None:
        self._buckets[device_id] = tokens
        self._buckets.move_to_end(device_id)
        while len(self._buckets) > self.max_tracked:
            self._buckets.popitem(last=False)


class ResendCollector:
    """``/metrics`` counters of this replica's resender (none while it has no MQTT)."""

    def __init__(self, counts: Callable[[], ResendCounts | None]) -> None:
        self.counts = counts

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        c = self.counts()
        if c is None:
            return
        for name, value, doc in (
            ("edgefleet_desired_resent", c.resent,
             "desired published again to devices that reported an older assignment than the latest issued"),
            ("edgefleet_desired_resend_limited", c.limited,
             "reports of an old assignment left unanswered: the device's resend limit was spent"),
            ("edgefleet_desired_resend_failed", c.failed + c.dropped,
             "re-sends the broker did not confirm, and reports dropped on a full queue"),
        ):
            yield CounterMetricFamily(name, doc, value=value)
