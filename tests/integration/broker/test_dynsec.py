"""Device accounts on Mosquitto's dynamic-security plugin (Debian's 2.0.11), through the real registry.

Enrollment goes through ``Devices.enroll`` with ``DynsecAccounts``: the device then logs in with
the password it was handed, on its own client id only, and reaches its own topics only.
Revocation ends its live session within 2 s. At start the server deletes accounts of devices
revoked while it could not reach the broker, and a broker bootstrapped with Debian's
``mosquitto_ctrl dynsec init`` gets the server's topic role from the server itself.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet import topics
from edgefleet.brokers import parse_broker_urls
from fleet_server.broker.dynsec import DynsecAccounts, conf_lines
from fleet_server.registry.devices import Devices
from simulation.brokers import SERVER_PASSWORD, SERVER_USER, DynsecMosquitto
from simulation.fleet import MosquittoProcess, wait_until

pytestmark = pytest.mark.mosquitto
WAIT = 5.0


class Session:
    def __init__(self, broker: MosquittoProcess, username: str, password: str, client_id: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.events: queue.Queue[Any] = queue.Queue()
        self.gone: queue.Queue[Any] = queue.Queue()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: self.events.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.events.put(rcs)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_disconnect = lambda c, u, f, rc, p: self.gone.put(rc)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.reason = self.events.get(timeout=WAIT)
        if self.reason.is_failure:
            self.client.loop_stop()

    def subscribe(self, topic: str) -> Any:
        self.client.subscribe(topic, qos=1)
        return self.events.get(timeout=WAIT)[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DynsecMosquitto]:
    with DynsecMosquitto(tmp_path / "mosquitto") as started:
        yield started


@pytest.fixture
def accounts(broker: DynsecMosquitto) -> Iterator[DynsecAccounts]:
    made = DynsecAccounts(parse_broker_urls(broker.url), SERVER_USER, SERVER_PASSWORD)
    yield made
    made.close()


@pytest.fixture
def devices(migrated_db: Any, accounts: DynsecAccounts) -> Devices:
    made = Devices(migrated_db, accounts)
    made.sync_broker()
    return made


def enroll(devices: Devices) -> Any:
    return devices.enroll(devices.create_token("generic-x86_64", {}, timedelta(hours=1)).token)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_enrolled_device_logs_in_on_its_own_client_id_and_reaches_only_its_topics(
        broker: DynsecMosquitto, devices: Devices) -> None:
    one, other = enroll(devices), enroll(devices)
    device = Session(broker, one.mqtt_username, one.mqtt_password, one.device_id)
    assert not device.reason.is_failure
    assert device.subscribe(topics.desired(one.device_id)).value == 1  # granted QoS 1
    assert device.subscribe(topics.desired(other.device_id)).is_failure
    device.close()
    # Another device's client id would knock that device off the broker: refused.
    thief = Session(broker, one.mqtt_username, one.mqtt_password, other.device_id)
    assert thief.reason.is_failure
    wrong = Session(broker, one.mqtt_username, "not-the-password", one.device_id)
    assert wrong.reason.is_failure


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_revocation_ends_the_live_session_within_two_seconds(broker: DynsecMosquitto, devices: Devices) -> None:
    grant = enroll(devices)
    device = Session(broker, grant.mqtt_username, grant.mqtt_password, grant.device_id)
    assert not device.reason.is_failure
    devices.revoke(grant.device_id)
    device.gone.get(timeout=2.0)
    device.client.loop_stop()
    again = Session(broker, grant.mqtt_username, grant.mqtt_password, grant.device_id)
    assert again.reason.is_failure


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_device_revoked_while_the_broker_was_away_is_deleted_at_the_next_start(
        broker: DynsecMosquitto, migrated_db: Any, devices: Devices, accounts: DynsecAccounts) -> None:
    kept, dropped = enroll(devices), enroll(devices)

    class Away:  # the broker unreachable while the revocation happens
        def sync(self, read_users: Any) -> None: ...
        def enrolled(self, *args: Any) -> None: ...
        def revoked(self, *args: Any) -> None: ...

    Devices(migrated_db, Away()).revoke(dropped.device_id)
    still = Session(broker, dropped.mqtt_username, dropped.mqtt_password, dropped.device_id)
    assert not still.reason.is_failure  # the broker did not hear of it
    devices.sync_broker()  # what the server does when it starts
    still.gone.get(timeout=2.0)
    still.client.loop_stop()
    ok = Session(broker, kept.mqtt_username, kept.mqtt_password, kept.device_id)
    assert not ok.reason.is_failure
    ok.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_mosquitto_ctrl_recipe_needs_only_the_servers_start(tmp_path: Path, migrated_db: Any) -> None:
    ctrl = shutil.which("mosquitto_ctrl")
    if ctrl is None:
        pytest.fail("mosquitto_ctrl is not installed: apt-get install -y mosquitto-clients")
    broker = MosquittoProcess(None, tmp_path / "recipe", auth=False, persistence=False)
    dynsec_file = broker.directory / "dynsec.json"
    subprocess.run([ctrl, "dynsec", "init", str(dynsec_file), SERVER_USER, SERVER_PASSWORD], check=True,
                   capture_output=True)
    original = broker._write_config

    def with_plugin() -> Path:
        config = original()
        lines = [line for line in config.read_text().splitlines() if line != "allow_anonymous true"]
        config.write_text("\n".join([*lines, *conf_lines(dynsec_file)]) + "\n")
        return config

    broker._write_config = with_plugin  # type: ignore[method-assign]
    with broker:
        accounts = DynsecAccounts(parse_broker_urls(broker.url), SERVER_USER, SERVER_PASSWORD)
        try:
            devices = Devices(migrated_db, accounts)
            devices.sync_broker()  # adds the server's topic role to init's admin client
            grant = enroll(devices)
            server = Session(broker, SERVER_USER, SERVER_PASSWORD, "server-probe")
            assert server.subscribe(topics.server_subscription("telemetry")).value == 1
            device = Session(broker, grant.mqtt_username, grant.mqtt_password, grant.device_id)
            device.client.publish(topics.telemetry(grant.device_id), b"hello", qos=1).wait_for_publish(WAIT)
            assert server.messages.get(timeout=WAIT) == (topics.telemetry(grant.device_id), b"hello")
            device.close()
            server.close()
        finally:
            accounts.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_server_started_before_its_broker_reconciles_when_the_broker_comes(tmp_path: Path, migrated_db: Any) -> None:
    broker = DynsecMosquitto(tmp_path / "late")  # not started yet
    accounts = DynsecAccounts(parse_broker_urls(broker.url), SERVER_USER, SERVER_PASSWORD, timeout=1.0)
    try:
        devices = Devices(migrated_db, accounts)
        devices.sync_broker()  # logged, not raised: the server starts anyway
        assert accounts.nodes[0].reconcile_pending
        with broker:
            wait_until(lambda: not accounts.nodes[0].reconcile_pending, 15, "the late broker to be reconciled")
            grant = enroll(devices)
            device = Session(broker, grant.mqtt_username, grant.mqtt_password, grant.device_id)
            assert not device.reason.is_failure
            device.close()
    finally:
        accounts.close()
