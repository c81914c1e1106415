"""Which devices in flight to ask for a fresh ``reported``: those the server has not heard from for a while.

Why: a device's outcome reaches the server as an event and as its ``reported`` document, both
QoS 1, and a broker's PUBACK does not mean the server will get them. A NATS node whose
JetStream stream leader dies has already acknowledged what it then never stores (an election
takes about 4.5 s), and a single Mosquitto killed with messages in memory loses them the same
way. Telemetry is confirmed end to end (``telemetry_ack``); events and reports are not: the
agent sends a ``committed`` once. If both copies are lost, the rollout core waits on that
device until its timeout, and one that reported serving the version (probation) never times
out. So the server asks: a device in flight that has been quiet for ``quiet_s`` is sent the
``report`` command (docs/contracts.md), which makes the agent publish ``reported`` again, whose
``update`` names its last outcome; the core reconciles it (``Rollout.device_reported``).

A device that stays quiet is asked again after a wait that doubles up to ``max_wait_s``, so an
offline device, or an agent without the command, costs one small QoS 0 message per long
interval. Hearing anything from the device starts over.

Pure: no clock, broker or database; the rollout worker passes the time, the devices it heard
from (any ``events`` or ``reported`` message) and the devices in flight, and sends the commands.
Each replica keeps its own view: with several replicas sharing the device messages, one may ask
a device the other just heard from (one extra message, no harm).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = ["REPORT_COMMAND", "QuietDevices", "QuietPolicy", "Send"]

Send = Callable[[Sequence[tuple[str, bytes]]], int]
"""Publishes (topic, payload) messages at QoS 0 without waiting; how many were taken (``FleetMqtt.send``)."""

# The ``commands`` payload that asks an agent (or a light simulated device) to publish ``reported``.
REPORT_COMMAND = json.dumps({"command": "report", "args": {}}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class QuietPolicy:
    """Ask a device in flight after ``quiet_s`` without a message; then after waits doubling to ``max_wait_s``."""

    quiet_s: float = 60.0
    max_wait_s: float = 600.0

    def __post_init__(self) -> None:
        if self.quiet_s <= 0 or self.max_wait_s < self.quiet_s:
            raise ValueError(f"need 0 < quiet_s <= max_wait_s ({self.quiet_s}, {self.max_wait_s})")

    def wait(self, asked: int) -> float:
        """How long to wait for a message after the ``asked``-th request (1, 2, ...) before the next."""
        return min(self.quiet_s * 2 ** min(asked, 32), self.max_wait_s)


class QuietDevices:
    """When each device in flight was last heard from, and when it was last asked to report."""

    def __init__(self, policy: QuietPolicy | None = None) -> None:
        self.policy = policy or QuietPolicy()
        self._heard: dict[str, float] = {}
        self._asked: dict[str, tuple[float, int]] = {}  # device -> (asked at, requests since heard)

    def __len__(self) -> int:
        return len(self._heard)

    def heard(self, device_ids: Iterable[str], now: float) -> None:
        """A message came from each of ``device_ids``: their quiet time starts again."""
        for device_id in device_ids:
            if device_id in self._heard:
                self._heard[device_id] = now
                self._asked.pop(device_id, None)

    def due(self, in_flight: Iterable[str], now: float) -> list[str]:
        """The devices of ``in_flight`` to ask now (sorted); marks them asked.

        A device first seen in flight here starts its quiet time now (an assignment just went
        out); one no longer in flight is forgotten.
        """
        wanted = set(in_flight)
        for gone in self._heard.keys() - wanted:
            del self._heard[gone]
            self._asked.pop(gone, None)
        ask = []
        for device_id in sorted(wanted):
            heard = self._heard.setdefault(device_id, now)
            asked = self._asked.get(device_id)
            if asked is None:
                if now - heard >= self.policy.quiet_s:
                    ask.append(device_id)
            elif now - asked[0] >= self.policy.wait(asked[1]):
                ask.append(device_id)
        for device_id in ask:
            self._asked[device_id] = (now, self._asked.get(device_id, (now, 0))[1] + 1)
        return ask
