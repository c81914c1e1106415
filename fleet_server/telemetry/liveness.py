"""Loud failure of the ingest: a server that receives nothing says so (issue 13).

A broker can grant the server's subscription and then deliver nothing: NATS 2.9's MQTT grants
``$share/...`` and never delivers to it, and Mosquitto grants a subscription its ACL forbids
and filters every message out. The server then sees silence, exactly as from a fleet that is
switched off, while devices show offline, rollouts stall and telemetry the broker acknowledged
is lost. Two checks tell the two apart:

- **deaf**: every ``probe_interval_s`` the server publishes a probe on a device topic that its
  own subscription covers (``edgefleet/v1/devices/edgefleet-probe-<replica>/events``; the
  server's broker account may write anything under ``edgefleet/v1/``, so no device ACL is
  widened, and a device cannot write there: its ACL names its own id). If probes went out and
  nothing at all (probe or device message) came back within ``probe_deadline_s``, the
  subscription does not deliver. With shared subscriptions a probe may reach another replica:
  any delivery counts, and with several replicas probing, each receives some.
- **silent**: devices are enrolled and no device message has arrived for ``silence_s``.

Either one turns ``/healthz`` to ``degraded`` with the reason and the fix, sets
``edgefleet_ingest_problem{reason}`` in ``/metrics``, and logs one error when it starts and one
line when it ends (never once per tick).

``Liveness`` is the pure judge (times in, problems out; no clock, broker or database);
``LivenessMonitor`` is the thread that probes, reads the enrolled count and the times of the
last delivery, and logs changes. It does not look at what messages contain: the ingest
(``fleet_server.telemetry.ingest``) swallows probes before any device handler sees them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet import topics
from fleet_server.errors import ServerError
from fleet_server.telemetry._periodic import Periodic

log = logging.getLogger(__name__)

TICK_S = 1.0  # how often the monitor judges: a problem shows within a second of its deadline
COUNT_EVERY_S = 10.0  # how often it counts the enrolled devices (a database read)
PROBE_PREFIX = "edgefleet-probe-"  # enrollment hands out "dev-..." ids only: no device has this one
DEAF = "deaf"
SILENT = "silent"
REASONS = (DEAF, SILENT)

__all__ = ["DEAF", "PROBE_PREFIX", "REASONS", "SILENT", "Liveness", "LivenessConfig", "LivenessMonitor", "Problem",
           "is_probe", "probe_topic"]


def probe_topic(client_id: str) -> str:
    """The topic this replica's probes go to: a device topic no device may write."""
    return topics.events(PROBE_PREFIX + hashlib.sha256(client_id.encode()).hexdigest()[:16])


def is_probe(device_id: str) -> bool:
    return device_id.startswith(PROBE_PREFIX)


@dataclass(frozen=True)
class LivenessConfig:
    """``silence_s`` 0 turns the silence check off; ``probe_interval_s`` 0 turns probing off."""

    silence_s: float = 900.0
    probe_interval_s: float = 5.0
    probe_deadline_s: float = 15.0

    def __post_init__(self) -> None:
        if min(self.silence_s, self.probe_interval_s, self.probe_deadline_s) < 0:
            raise ValueError("liveness intervals must not be negative")


@dataclass(frozen=True)
class Problem:
    reason: str  # one of REASONS
    detail: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "detail": self.detail, "fix": self.fix}


class Liveness:
    """The pure judge. Times are seconds on one monotonic clock, passed in by the caller."""

    def __init__(self, config: LivenessConfig, started: float) -> None:
        self.config = config
        self.started = started
        self.unanswered_since: float | None = None  # first probe sent after the last delivery

    def probe_sent(self, now: float, last_delivery: float | None) -> None:
        if self.unanswered_since is None or (last_delivery is not None and last_delivery >= self.unanswered_since):
            self.unanswered_since = now

    def disconnected(self) -> None:
        """Probes sent before a disconnect prove nothing about the next connection."""
        self.unanswered_since = None

    def problems(self, now: float, *, last_delivery: float | None, last_device_message: float | None,
                 enrolled: int) -> list[Problem]:
        found = []
        pending = self.unanswered_since
        if pending is not None and (last_delivery is None or last_delivery < pending):
            waited = now - pending
            if waited >= self.config.probe_deadline_s:
                found.append(Problem(
                    DEAF, f"the broker accepted the server's subscription but delivered nothing, not even the "
                          f"server's own probe, for {waited:.0f} s",
                    "the broker must deliver MQTT shared subscriptions ($share/edgefleet/...) to the server's "
                    "account: check its ACL for the server user (read edgefleet/v1/#) and that the broker "
                    "supports shared subscriptions for MQTT 3.1.1 clients (NATS 2.9's MQTT does not; "
                    "docs/deployment.md)"))
        if self.config.silence_s > 0 and enrolled > 0:
            since = max(last_device_message or self.started, self.started)
            quiet = now - since
            if quiet >= self.config.silence_s:
                heard = "since the server started" if last_device_message is None else "from any device"
                found.append(Problem(
                    SILENT, f"{enrolled} device(s) enrolled and no message {heard} for {quiet:.0f} s",
                    "check that the devices are on and reach the broker (edgefleet devices list shows last_seen), "
                    "and that the broker delivers to the server; raise ingest_silence_seconds for a fleet "
                    "that is quiet this long by design"))
        return found


class LivenessMonitor:
    """The thread around ``Liveness``: probes, reads the last deliveries, logs changes once.

    ``publish(topic, payload)`` sends one probe (raising when the broker does not take it);
    ``connected()``, ``last_delivery()`` (any message the subscription delivered, probes
    included) and ``last_device_message()`` (device messages only) are read each tick, times
    on ``monotonic``; ``enrolled()`` counts the enrolled devices (a database read every
    ``COUNT_EVERY_S``). While ``saturated()`` (the ingest's queue is full: the handler blocks and
    paho reads nothing until the writer catches up, e.g. while the database is down) probes
    prove nothing about the broker, so the deaf check waits.
    """

    def __init__(self, config: LivenessConfig, *, probe_topic: str, publish: Callable[[str, bytes], None],
                 connected: Callable[[], bool], last_delivery: Callable[[], float | None],
                 last_device_message: Callable[[], float | None], enrolled: Callable[[], int],
                 saturated: Callable[[], bool] = lambda: False, monotonic: Callable[[], float] = time.monotonic,
                 tick_s: float | None = None) -> None:
        self.config = config
        self.probe_topic = probe_topic
        self._publish = publish
        self._connected = connected
        self._last_delivery = last_delivery
        self._last_device_message = last_device_message
        self._enrolled = enrolled
        self._saturated = saturated
        self._monotonic = monotonic
        self.judge = Liveness(config, monotonic())
        self.tick_s = tick_s or TICK_S
        self._lock = threading.Lock()
        self._problems: list[Problem] = []
        self._last_probe = -float("inf")
        self._last_count = -float("inf")
        self._enrolled_count = 0
        # A first tick at once: the first probe goes out as soon as the server is connected.
        self._loop = Periodic("edgefleet-liveness", self._tick_logged, self.tick_s, at_once=True)

    def problems(self) -> list[Problem]:
        with self._lock:
            return list(self._problems)

    def start(self) -> LivenessMonitor:
        self._loop.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._loop.stop(timeout)

    def _tick_logged(self) -> None:
        try:
            self.tick()
        except Exception:  # the watchdog must outlive a database or broker hiccup
            log.exception("the ingest liveness check failed; trying again")

    def tick(self) -> list[Problem]:
        """One round: probe if due, judge, log what changed. Returns the problems now."""
        now = self._monotonic()
        if not self._connected() or self._saturated():
            self.judge.disconnected()  # /healthz already says mqtt_connected false; or we are not reading
        elif self.config.probe_interval_s > 0 and now - self._last_probe >= self.config.probe_interval_s:
            self._last_probe = now
            try:
                self._publish(self.probe_topic, json.dumps({"probe": self.probe_topic, "at": time.time()}).encode())
            except ServerError as exc:
                log.debug("the liveness probe was not published: %s", exc)
            else:
                self.judge.probe_sent(now, self._last_delivery())
        if self.config.silence_s > 0 and now - self._last_count >= COUNT_EVERY_S:
            self._last_count = now
            try:
                self._enrolled_count = self._enrolled()
            except Exception:  # keep the last count: a database hiccup must not clear a problem
                log.debug("counting enrolled devices failed", exc_info=True)
        found = self.judge.problems(self._monotonic(), last_delivery=self._last_delivery(),
                                    last_device_message=self._last_device_message(), enrolled=self._enrolled_count)
        with self._lock:
            before = {p.reason for p in self._problems}
            self._problems = found
        after = {p.reason for p in found}
        for problem in found:
            if problem.reason not in before:
                log.error("ingest %s: %s. Fix: %s", problem.reason, problem.detail, problem.fix)
        for reason in sorted(before - after):
            log.warning("ingest %s: resolved, messages arrive again", reason)
        return found
