"""Who may use the broker and for what: the pure decisions every broker-auth path shares.

A broker that asks the fleet server at CONNECT (NATS auth callout, ``fleet_server.broker.nats_auth``;
the HTTP endpoint Mosquitto's edgefleet plugin, EMQX, VerneMQ and HiveMQ call,
``fleet_server.broker.auth_api``) gets one answer per login: a ``Grant`` for a device or for the
server's own account, or a refusal with its reason (``decide``). ``mqtt_allowed`` is the topic rule
of shared/design.md in MQTT terms, the same one ``edgefleet.topics.acl_lines`` writes for the
password-file backend and the Mosquitto plugin (mosquitto_plugin/edgefleet_auth.c) applies in C:

- a device reads and subscribes to only its own ``desired`` and ``commands`` (literally: no
  wildcard over them), publishes only its own ``reported``, ``events`` and ``telemetry``, and its
  MQTT client id is its device id (any other would let it take over another device's session);
- the server's account may do anything under ``edgefleet/v1/``, its shared subscriptions
  (``$share/edgefleet/edgefleet/v1/...``) included.

Pure: no registry, no clock, no network. The lookup that turns a login into a ``Grant`` lives
with the server's context (``ServerContext.broker_grant``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgefleet import topics
from fleet_server.broker.nats_ingest import nats_subject

Access = Literal["read", "write", "subscribe", "unsubscribe"]
ACCESS: tuple[Access, ...] = ("read", "write", "subscribe", "unsubscribe")
# What other brokers' HTTP hooks send for the same checks: EMQX "publish"/"subscribe",
# mosquitto-go-auth's numbers (1 read, 2 write, 4 subscribe), Mosquitto's MOSQ_ACL_* bits.
_ACCESS_ALIASES: dict[str, Access] = {
    "read": "read", "1": "read", "write": "write", "publish": "write", "2": "write",
    "subscribe": "subscribe", "4": "subscribe", "unsubscribe": "unsubscribe", "8": "unsubscribe",
}
_PREFIX = topics.PREFIX + "/"
_SHARED_PREFIX = f"$share/{topics.SHARE_GROUP}/{_PREFIX}"


@dataclass(frozen=True)
class Grant:
    """What one login may do: NATS ``pub``/``sub`` allow lists (empty: nothing), and its device.

    ``device_id`` None is the server's own account; a device's grant holds its MQTT client id to it.
    """

    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    device_id: str | None = None

    @property
    def is_server(self) -> bool:
        return self.device_id is None

    def permissions(self) -> dict[str, Any]:
        return {"pub": {"allow": list(self.publish)}, "sub": {"allow": list(self.subscribe)}}


def device_grant(device_id: str) -> Grant:
    return Grant(device_id,
                 tuple(nats_subject(topics.device_topic(device_id, k)) for k in topics.DEVICE_TO_SERVER),
                 tuple(nats_subject(topics.device_topic(device_id, k)) for k in topics.SERVER_TO_DEVICE),
                 device_id)


def server_grant(name: str) -> Grant:
    # The server's JetStream consumer needs the $JS API and inboxes; its MQTT publisher the
    # device subjects: everything in the account.
    return Grant(name, (">",), (">",))


@dataclass(frozen=True)
class Login:
    """What a connecting client presented."""

    user: str
    password: str
    client_type: str  # "mqtt" or "nats"
    mqtt_client_id: str | None = None
    host: str = ""


def decide(login: Login, grant: Grant | None) -> tuple[Grant | None, str]:
    """The grant to give, or None and why not (a device's MQTT client id must be its device id)."""
    if grant is None:
        return None, "unknown user or wrong password"
    if grant.device_id is not None and login.client_type == "mqtt" and login.mqtt_client_id != grant.device_id:
        return None, f"MQTT client id {login.mqtt_client_id!r} is not the device id"
    return grant, ""


def parse_access(value: object) -> Access:
    """An access kind as any of the brokers' hooks spell it; ValueError if it is none of them."""
    access = _ACCESS_ALIASES.get(str(value).strip().lower())
    if access is None:
        raise ValueError(f"access {value!r} is not one of read, write (publish), subscribe, unsubscribe")
    return access


def mqtt_allowed(grant: Grant, topic: str, access: Access) -> bool:
    """May ``grant`` do ``access`` on MQTT ``topic``? (``topic`` is a filter for (un)subscribe.)"""
    if access == "unsubscribe":
        return True  # dropping a subscription never reaches anything
    if grant.is_server:
        return topic.startswith(_PREFIX) or (access == "subscribe" and topic.startswith(_SHARED_PREFIX))
    try:
        device_id, kind = topics.parse_device_topic(topic)
    except ValueError:
        return False  # wildcards, other prefixes, other shapes
    if device_id != grant.device_id:
        return False
    return kind in (topics.DEVICE_TO_SERVER if access == "write" else topics.SERVER_TO_DEVICE)
