"""MQTT topic names (shared/design.md, "MQTT topics"). All QoS 1.

Devices may read only their own ``desired`` and ``commands`` topics and write only their own
``reported``, ``events`` and ``telemetry`` topics; ``acl_lines`` renders that rule in
Mosquitto's ACL syntax so the server and the tests agree on it.
"""

from __future__ import annotations

import re

PREFIX = "edgefleet/v1"
SHARE_GROUP = "edgefleet"

DEVICE_TO_SERVER = ("reported", "events", "telemetry")
SERVER_TO_DEVICE = ("desired", "commands")

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        # MQTT wildcards or separators in an id would let it escape its topic subtree.
        raise ValueError(f"device id {device_id!r} is not valid: use letters, digits, '-' or '_'")
    return device_id


def device_topic(device_id: str, kind: str) -> str:
    if kind not in DEVICE_TO_SERVER + SERVER_TO_DEVICE:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{PREFIX}/devices/{check_device_id(device_id)}/{kind}"


def desired(device_id: str) -> str:
    return device_topic(device_id, "desired")


def reported(device_id: str) -> str:
    return device_topic(device_id, "reported")


def events(device_id: str) -> str:
    return device_topic(device_id, "events")


def telemetry(device_id: str) -> str:
    return device_topic(device_id, "telemetry")


def commands(device_id: str) -> str:
    return device_topic(device_id, "commands")


def server_subscription(kind: str, *, shared: bool = True) -> str:
    """The wildcard the server subscribes to for one device-to-server kind.

    With ``shared`` several server replicas split the messages (MQTT 5 shared subscriptions,
    also honoured by Mosquitto for 3.1.1 clients).
    """
    if kind not in DEVICE_TO_SERVER:
        raise ValueError(f"servers do not subscribe to {kind!r}")
    topic = f"{PREFIX}/devices/+/{kind}"
    return f"$share/{SHARE_GROUP}/{topic}" if shared else topic


def parse_device_topic(topic: str) -> tuple[str, str]:
    """Return (device_id, kind) for a device topic, or raise ValueError."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{PREFIX}/devices":
        raise ValueError(f"not an edgefleet device topic: {topic!r}")
    device_id, kind = parts[3], parts[4]
    check_device_id(device_id)
    if kind not in DEVICE_TO_SERVER + SERVER_TO_DEVICE:
        raise ValueError(f"unknown topic kind in {topic!r}")
    return device_id, kind


def acl_lines(username: str, device_id: str) -> list[str]:
    """Mosquitto ACL lines for one device user."""
    lines = [f"user {username}"]
    lines += [f"topic read {device_topic(device_id, k)}" for k in SERVER_TO_DEVICE]
    lines += [f"topic write {device_topic(device_id, k)}" for k in DEVICE_TO_SERVER]
    return lines
