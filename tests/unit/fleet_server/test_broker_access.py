"""The topic rule every broker-auth path shares (fleet_server.broker.access), as a threat model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet import topics
from fleet_server.broker.access import (
    ACCESS,
    Login,
    decide,
    device_grant,
    mqtt_allowed,
    parse_access,
    server_grant,
)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
kinds = st.sampled_from(topics.DEVICE_TO_SERVER + topics.SERVER_TO_DEVICE)


@given(ids, kinds, st.sampled_from(ACCESS))
def test_a_device_writes_only_its_uplinks_and_reads_only_its_downlinks(device_id: str, kind: str, access: str) -> None:
    allowed = mqtt_allowed(device_grant(device_id), topics.device_topic(device_id, kind), access)  # type: ignore[arg-type]
    if access == "unsubscribe":
        assert allowed
    elif access == "write":
        assert allowed == (kind in topics.DEVICE_TO_SERVER)
    else:
        assert allowed == (kind in topics.SERVER_TO_DEVICE)


@given(ids, ids, kinds, st.sampled_from(("read", "write", "subscribe")))
def test_a_device_never_reaches_another_devices_topics(one: str, other: str, kind: str, access: str) -> None:
    if one != other:
        assert not mqtt_allowed(device_grant(one), topics.device_topic(other, kind), access)  # type: ignore[arg-type]


@pytest.mark.parametrize("topic", ["#", "edgefleet/v1/#", "edgefleet/v1/devices/+/desired",
                                   "edgefleet/v1/devices/dev-1/#", "edgefleet/v1/devices/dev-1/+",
                                   "edgefleet/v1/devices/dev-1/desired/x", "$share/edgefleet/edgefleet/v1/devices/dev-1/desired",
                                   "$CONTROL/edgefleet-auth/v1", "edgefleet/v1/devices/dev-1/desired\n"])
def test_a_device_gets_no_wildcard_share_or_control_topic(topic: str) -> None:
    for access in ("read", "write", "subscribe"):
        assert not mqtt_allowed(device_grant("dev-1"), topic, access)  # type: ignore[arg-type]


def test_the_server_account_has_the_prefix_and_its_shared_subscriptions_only() -> None:
    grant = server_grant("edgefleet-server")
    assert mqtt_allowed(grant, topics.server_subscription("telemetry"), "subscribe")
    assert mqtt_allowed(grant, topics.desired("dev-1"), "write")
    assert mqtt_allowed(grant, "edgefleet/v1/#", "subscribe")
    assert not mqtt_allowed(grant, topics.server_subscription("telemetry"), "write")
    assert not mqtt_allowed(grant, "#", "subscribe")
    assert not mqtt_allowed(grant, "other/app", "write")


def test_a_devices_client_id_must_be_its_device_id() -> None:
    grant = device_grant("dev-1")
    assert decide(Login("dev-1", "pw", "mqtt", "dev-1"), grant) == (grant, "")
    refused, why = decide(Login("dev-1", "pw", "mqtt", "dev-2"), grant)
    assert refused is None and "dev-2" in why
    assert decide(Login("x", "pw", "mqtt", "x"), None)[0] is None
    server = server_grant("edgefleet-server")
    assert decide(Login("edgefleet-server", "pw", "mqtt", "any-replica"), server) == (server, "")


@pytest.mark.parametrize(("spelled", "access"), [("publish", "write"), ("subscribe", "subscribe"), (1, "read"),
                                                 (2, "write"), (4, "subscribe"), ("8", "unsubscribe"),
                                                 (" Read ", "read")])
def test_access_as_each_brokers_hook_spells_it(spelled: object, access: str) -> None:
    assert parse_access(spelled) == access


def test_an_unknown_access_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        parse_access("all")
