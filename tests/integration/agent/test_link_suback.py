"""A broker that refuses a subscription (SUBACK 0x80) and keeps the connection: the link asks again.

A real refusal on a real Mosquitto: its dynamic-security plugin (the accounts backend of
``fleet_server.broker.dynsec``) gives the device a role without ``subscribeLiteral`` on its
``desired``, so Mosquitto answers that SUBSCRIBE with 0x80 and keeps the connection, as a NATS
gateway does when the JetStream consumer is late. (Debian's Mosquitto 2.0.11 grants a SUBSCRIBE
that an ``acl_file`` denies and only withholds the messages, so a plain ACL file cannot show
this.) Then the role gets the ACL back over the plugin's control API (the plugin then drops the
device's connection, as it does for every client of a role it changes), and the link's next try
is granted: it must have counted the refusals, kept asking with its backoff on the one
connection, received the retained ``desired`` published meanwhile, and published ``reported``
again once granted, although the broker resumed its session (which lacked the refused subscription).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.link import Backoff, Link
from agent.state import Credentials
from edgefleet import topics
from edgefleet.brokers import parse_broker_urls
from fleet_server.broker.accounts import BrokerUser
from fleet_server.broker.auth import mosquitto_password_hash
from fleet_server.broker.dynsec import ControlClient, device_role_name
from simulation.brokers import SERVER_PASSWORD, SERVER_USER, DynsecMosquitto
from tests.integration.agent.harness import Observer, eventually

pytestmark = pytest.mark.mosquitto
DEVICE, PASSWORD = "dev-suback", "device-secret"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DynsecMosquitto]:
    device = BrokerUser(DEVICE, mosquitto_password_hash(PASSWORD, iterations=10), DEVICE)
    with DynsecMosquitto(tmp_path / "mosquitto", devices=[device]) as started:
        yield started


def _desired_acl(control: ControlClient, command: str) -> None:
    acl = {"acltype": "subscribeLiteral", "topic": topics.desired(DEVICE)}
    if command == "addRoleACL":
        acl["allow"] = True  # type: ignore[assignment]
    answers = control.call([{"command": command, "rolename": device_role_name(DEVICE), **acl}])
    assert all(a.error is None for a in answers), answers


def test_refused_subscription_is_asked_again_until_granted(broker: DynsecMosquitto) -> None:
    control = ControlClient(parse_broker_urls(broker.url)[0], SERVER_USER, SERVER_PASSWORD).start()
    _desired_acl(control, "removeRoleACL")
    server = Observer(broker.port, topics.reported(DEVICE), username=SERVER_USER, password=SERVER_PASSWORD)
    received: list[bytes] = []
    link = Link(DEVICE, broker.url, credentials=Credentials(DEVICE, PASSWORD), on_desired=received.append,
                backoff=Backoff(initial=0.1, maximum=0.5), suback_backoff=Backoff(initial=0.2, maximum=0.4))
    link.set_reported({"models": {}, "update": {"state": "idle"}, "assignment_counter": 0})
    try:
        link.start()
        assert link.wait_connected(10)
        # refused, and refused again at each retry while the role says no; never a disconnect
        assert eventually(lambda: link.suback_refusals >= 2, timeout=10), "the link did not retry the refused SUBSCRIBE"
        assert link.connected and not link.subscribed.is_set() and link.connects == 1
        # what the server publishes while the device cannot hear it (retained, as `desired` is)
        server.publish(topics.desired(DEVICE), b'{"signed": {"counter": 1}, "signatures": []}', retain=True)

        # The plugin disconnects the clients of a role it changes: the grant comes on the next
        # connection, which resumes the session that lacks the refused subscription.
        kicked_at = len(server.messages)
        _desired_acl(control, "addRoleACL")
        assert link.subscribed.wait(10), "the link never subscribed again after the broker allowed it"
        assert eventually(lambda: received == [b'{"signed": {"counter": 1}, "signatures": []}'])
        # reported at the connect, and again once desired was granted after the refusal: the server
        # compares the assignment it names with the latest issued (docs/contracts.md)
        assert eventually(lambda: sum(m["online"] for m in server.messages[kicked_at:]) >= 2), server.messages
        assert server.messages[-1]["assignment_counter"] == 0
        assert link.connects == 2
    finally:
        link.stop()
        server.close()
        control.stop()
