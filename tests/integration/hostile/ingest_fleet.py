"""A small fleet for the ingest's hostile-input tests: a real server, a real Mosquitto with auth, devices.

``HostileFleet`` starts Mosquitto (password file and ACL, written by the server as in production)
and a fleet server on the given database, pushes ``digits@1.0.0`` (its reference: no input
features, two output classes), enrolls three good devices and one hostile one through the REST
API and connects each with the MQTT credentials enrollment gave it. ``GoodDevice`` sends valid
telemetry, events and reports and remembers every key it sent, so that a test can count what
was stored (``missing``). Nothing here mocks the broker, the server or the database.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from edgefleet import telemetry, topics
from edgefleet.telemetry import Latency, ModelRecord, TelemetryBatch
from fleet_server.tables import DeviceEventRow, TelemetryBatchRow
from simulation.fleet import MosquittoProcess
from tests.integration.server.harness import RunningServer, make_bundle, server_config

ADMIN = {"Authorization": "Bearer test-admin-token"}
WAIT_S = 30.0
_client_ids = itertools.count()


def eventually(check: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll ``check`` until it holds or the deadline passes (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Device:
    """One enrolled device's MQTT connection (its own credentials, so the broker's ACL applies)."""

    def __init__(self, broker: MosquittoProcess, grant: dict[str, Any]) -> None:
        self.id: str = grant["device_id"]
        deadline = time.monotonic() + WAIT_S
        # Mosquitto re-reads its password file on SIGHUP in its own time: retry until it knows us.
        while True:
            self.client, ok = self._connect(broker, grant)
            if ok:
                break
            self.client.loop_stop()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.id} could not log in to Mosquitto")
            time.sleep(0.05)

    def _connect(self, broker: MosquittoProcess, grant: dict[str, Any]) -> tuple[mqtt.Client, bool]:
        connected = threading.Event()
        result: list[bool] = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.id}-{next(_client_ids)}")
        client.username_pw_set(grant["mqtt_username"], grant["mqtt_password"])

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            result.append(not reason.is_failure)
            connected.set()

        client.on_connect = on_connect
        client.connect("127.0.0.1", broker.port, keepalive=30)
        client.loop_start()
        connected.wait(5)
        return client, bool(result and result[0])

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)  # the broker's PUBACK: ordered against the other devices' messages
        assert info.is_published(), f"{self.id} could not publish on {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class GoodDevice(Device):
    """A well-behaved device that remembers every message it sent."""

    def __init__(self, broker: MosquittoProcess, grant: dict[str, Any]) -> None:
        super().__init__(broker, grant)
        self.seqs: list[int] = []
        self.event_ids: list[str] = []
        self.reports = 0

    def batch(self) -> None:
        seq = len(self.seqs) + 1
        record = ModelRecord("digits", "1.0.0", count=10 + seq, latency=Latency(0.5, 1.0, 2.0), outputs=(seq, 3))
        body = TelemetryBatch(self.id, seq, time.time(), 60, models=(record,))
        self.publish(topics.telemetry(self.id), telemetry.encode(body))
        self.seqs.append(seq)

    def event(self) -> None:
        event_id = f"{self.id}-e{len(self.event_ids) + 1}"
        document = {"device_id": self.id, "event_id": event_id, "ts": time.time(), "event": "staged",
                    "model": "digits", "version": "1.0.0", "counter": 1, "rollout_id": None, "reason": None,
                    "timings": {"stage_s": 0.1}, "details": {}}
        self.publish(topics.events(self.id), json.dumps(document).encode())
        self.event_ids.append(event_id)

    def report(self) -> None:
        self.reports += 1
        document = {"device_id": self.id, "online": True, "agent_version": f"0.1.{self.reports}",
                    "profile": "rpi4-64", "models": {"digits": {"version": "1.0.0", "sha256": "0" * 64}},
                    "update": {"state": "idle"}, "ts": time.time()}
        self.publish(topics.reported(self.id), json.dumps(document).encode(), retain=True)

    def round(self) -> None:
        self.batch()
        self.event()


class HostileFleet:
    def __init__(self, server: RunningServer, broker: MosquittoProcess, good: list[GoodDevice], hostile: Device) -> None:
        self.server = server
        self.broker = broker
        self.good = good
        self.hostile = hostile

    def api(self, path: str) -> Any:
        answer = httpx.get(f"{self.server.url}/api/v1{path}", headers=ADMIN, timeout=30)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
        return answer.json()

    def metrics(self) -> str:
        answer = httpx.get(f"{self.server.url}/metrics", timeout=30)
        assert answer.status_code == 200, answer.text[:500]
        return answer.text

    def refusals(self, device_id: str) -> dict[tuple[str, str], int]:
        shown = self.api(f"/devices/{device_id}")
        return {(r["topic"], r["reason"]): r["count"] for r in shown["refused_messages"] + shown["clamped_messages"]}

    def round(self) -> None:
        for device in self.good:
            device.round()

    def missing(self) -> dict[str, Any]:
        """The good messages sent but not stored (yet): batches by seq, events by id, last reports."""
        db = self.server.ctx.db
        ids = [d.id for d in self.good]
        with db.session() as session:
            batches = set(session.execute(select(TelemetryBatchRow.device_id, TelemetryBatchRow.seq)
                                          .where(TelemetryBatchRow.device_id.in_(ids))).tuples())
            events = set(session.execute(select(DeviceEventRow.device_id, DeviceEventRow.event_id)
                                         .where(DeviceEventRow.device_id.in_(ids))).tuples())
        missing: dict[str, Any] = {}
        for device in self.good:
            lost_batches = [s for s in device.seqs if (device.id, s) not in batches]
            lost_events = [e for e in device.event_ids if (device.id, e) not in events]
            if lost_batches or lost_events:
                missing[device.id] = {"batches": lost_batches, "events": lost_events}
        return missing

    def wait_stored(self) -> dict[str, Any]:
        """Poll until every good message is stored; what is still missing at the deadline."""
        deadline = time.monotonic() + WAIT_S
        while (missing := self.missing()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return missing

    def reported_versions(self) -> dict[str, str]:
        return {d.id: self.api(f"/devices/{d.id}")["agent_version"] for d in self.good}


@contextmanager
def hostile_fleet(directory: Path, database_url: str) -> Iterator[HostileFleet]:
    with ExitStack() as stack:
        broker = stack.enter_context(MosquittoProcess(None, directory / "mosquitto", auth=True, persistence=False))
        assert broker.proc is not None
        config = server_config(directory / "data", database_url, broker_url=broker.url,
                               mosquitto_dir=broker.directory, mosquitto_pid_file=broker.pid_file)
        server = stack.enter_context(RunningServer(config))
        assert server.ctx.mqtt.wait_connected(WAIT_S), "the server could not log in to Mosquitto"
        pushed = httpx.post(f"{server.url}/api/v1/models", headers=ADMIN, timeout=60,
                            files={"bundle": ("digits.tar.gz", make_bundle("digits", "1.0.0"), "application/gzip")})
        assert pushed.status_code == 201, pushed.text
        grants = [_enroll(server) for _ in range(4)]
        good = [GoodDevice(broker, g) for g in grants[:3]]
        hostile = Device(broker, grants[3])
        for device in [*good, hostile]:
            stack.callback(device.close)
        yield HostileFleet(server, broker, good, hostile)


def _enroll(server: RunningServer) -> dict[str, Any]:
    token = httpx.post(f"{server.url}/api/v1/devices/enrollment-tokens", json={"profile": "rpi4-64"},
                       headers=ADMIN, timeout=30)
    assert token.status_code == 201, token.text
    grant = httpx.post(f"{server.url}/api/v1/enroll", json={"token": token.json()["token"]}, timeout=30)
    assert grant.status_code == 200, grant.text
    answer: dict[str, Any] = grant.json()
    return answer


@contextmanager
def fleet_on(kind: str, request: Any, directory: Path) -> Iterator[HostileFleet]:
    """A ``HostileFleet`` on a migrated database of its own: ``kind`` is sqlite or postgres.

    For module-scoped fixtures (one fleet per module and database): the session's migrated
    templates (tests/conftest.py) are copied, as the function-scoped ``database_url`` does.
    """
    from simulation.databases import postgres_database, sqlite_copy

    with ExitStack() as stack:
        if kind == "sqlite":
            url = sqlite_copy(request.getfixturevalue("_sqlite_template"), directory / "edgefleet.sqlite")
        else:
            url = stack.enter_context(postgres_database(request.getfixturevalue("_postgres_template")))
        yield stack.enter_context(hostile_fleet(directory, url))
