"""Device presence from MQTT messages: the pure part of the ingest.

``parse_message`` turns one message on a device topic into a ``PresenceUpdate`` (or None when
the message says nothing about presence). A ``reported`` document with ``"online": true``
marks the device online and carries what it runs; the broker's retained last will
(``{"device_id", "online": false}``) marks it offline; any ``events`` message proves the
device is alive. A payload whose ``device_id`` disagrees with its topic is refused: the broker
ACL should already stop a device writing another's topic, and this keeps a misconfigured
broker from letting one device speak for another.

No broker, database or clock here: the time comes in as an argument.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edgefleet.topics import parse_device_topic

MAX_PAYLOAD = 256 * 1024


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
