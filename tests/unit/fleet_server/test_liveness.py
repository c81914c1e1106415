"""The ingest's loud failure (issue 13), on scripted times: when a server that hears nothing says so.

Threat model: a broker that grants the server's subscription and delivers nothing (NATS 2.9's
MQTT with ``$share``, a Mosquitto ACL that filters every message) left the server silent while
its fleet looked offline. The pure judge is driven here; the real deaf broker is in
tests/integration/telemetry/test_durable_ingest.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from edgefleet import topics
from fleet_server.errors import BrokerError
from fleet_server.telemetry.liveness import (
    DEAF,
    SILENT,
    Liveness,
    LivenessConfig,
    LivenessMonitor,
    is_probe,
    probe_topic,
)

CONFIG = LivenessConfig(silence_s=60, probe_interval_s=5, probe_deadline_s=20)  # not the defaults


def reasons(judge: Liveness, now: float, *, delivery: float | None = None, device: float | None = None,
            enrolled: int = 1) -> set[str]:
    return {p.reason for p in judge.problems(now, last_delivery=delivery, last_device_message=device,
                                             enrolled=enrolled)}


def test_probes_that_never_come_back_make_the_server_deaf_after_the_deadline() -> None:
    judge = Liveness(CONFIG, started=0)
    for t in range(0, 25, 5):
        judge.probe_sent(t, None)
    assert reasons(judge, 19, device=None) == set()
    assert reasons(judge, 20, device=None) == {DEAF}


def test_any_delivery_after_the_first_unanswered_probe_clears_deafness() -> None:
    judge = Liveness(CONFIG, started=0)
    judge.probe_sent(0, None)
    assert reasons(judge, 30, delivery=0.01) == set()  # the probe came back (maybe through another replica's)
    judge.probe_sent(30, 0.01)
    assert reasons(judge, 49, delivery=0.01) == set()
    assert reasons(judge, 50, delivery=0.01) == {DEAF}  # nothing since the probe at 30
    judge.probe_sent(35, 0.01)  # a later probe does not move the start of the wait
    assert reasons(judge, 50, delivery=0.01) == {DEAF}


def test_a_disconnect_forgets_the_probes_sent_before_it() -> None:
    judge = Liveness(CONFIG, started=0)
    judge.probe_sent(0, None)
    judge.disconnected()
    assert reasons(judge, 100, enrolled=0) == set()


def test_silence_counts_only_with_devices_enrolled_and_from_the_start_or_the_last_device_message() -> None:
    judge = Liveness(CONFIG, started=100)
    assert reasons(judge, 159) == set()
    assert reasons(judge, 160) == {SILENT}
    assert reasons(judge, 160, enrolled=0) == set()  # an empty fleet is quiet by right
    assert reasons(judge, 200, device=150) == set()
    assert reasons(judge, 210, device=150) == {SILENT}
    assert reasons(judge, 10_000, device=150) == {SILENT}
    assert reasons(Liveness(LivenessConfig(silence_s=0), started=0), 10_000) == set()  # 0: off


def test_every_problem_carries_a_detail_and_a_fix() -> None:
    judge = Liveness(CONFIG, started=0)
    judge.probe_sent(0, None)
    found = judge.problems(100, last_delivery=None, last_device_message=None, enrolled=3)
    assert {p.reason for p in found} == {DEAF, SILENT}
    assert all(p.detail and p.fix for p in found)
    assert "3 device(s)" in next(p for p in found if p.reason == SILENT).detail


def test_the_probe_topic_is_a_device_topic_the_servers_subscription_covers_and_no_device_can_have() -> None:
    topic = probe_topic("edgefleet-server-fleet-a")
    device_id, kind = topics.parse_device_topic(topic)
    assert kind == "events" and is_probe(device_id)
    assert probe_topic("edgefleet-server-fleet-b") != topic
    from fleet_server.credentials import new_device_id

    assert not is_probe(new_device_id())  # enrollment never hands the probe's id out
    # A device's ACL names its own topics only: a device cannot write a probe.
    assert not any(topic in line for line in topics.acl_lines("dev-1", "dev-1"))


class Scripted:
    """The monitor's seams on a scripted clock: what a real broker and database would answer."""

    def __init__(self) -> None:
        self.now = 0.0
        self.published: list[str] = []
        self.delivered: float | None = None
        self.connected = True
        self.refuse_publish = False

    def publish(self, topic: str, _payload: bytes) -> None:
        if self.refuse_publish:
            raise BrokerError("publishing timed out")
        self.published.append(topic)

    def monitor(self, **kwargs: Any) -> LivenessMonitor:
        return LivenessMonitor(CONFIG, probe_topic="edgefleet/v1/devices/edgefleet-probe-x/events",
                               publish=self.publish, connected=lambda: self.connected,
                               last_delivery=lambda: self.delivered, last_device_message=lambda: None,
                               enrolled=lambda: 0, monotonic=lambda: self.now, **kwargs)


def test_the_monitor_logs_a_problem_once_when_it_starts_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    seams = Scripted()
    monitor = seams.monitor()
    with caplog.at_level(logging.INFO, logger="fleet_server.telemetry.liveness"):
        for t in range(0, 60, 5):
            seams.now = t
            monitor.tick()
        assert [p.reason for p in monitor.problems()] == [DEAF]
        seams.delivered = 60.5
        seams.now = 61
        monitor.tick()
    assert monitor.problems() == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "deaf" in errors[0].getMessage() and "Fix:" in errors[0].getMessage()
    assert sum("resolved" in r.getMessage() for r in caplog.records) == 1
    assert len(seams.published) == 13  # one probe every 5 s: 0, 5, ... 55, then 61


def test_a_probe_the_broker_did_not_take_starts_no_wait_and_a_disconnected_server_probes_nothing() -> None:
    seams = Scripted()
    monitor = seams.monitor()
    seams.refuse_publish = True
    for t in range(0, 60, 5):
        seams.now = t
        assert monitor.tick() == []
    seams.refuse_publish, seams.connected = False, False
    for t in range(60, 120, 5):
        seams.now = t
        assert monitor.tick() == []
    assert seams.published == []


def test_a_server_whose_own_queue_is_full_is_not_called_deaf() -> None:
    """A full ingest queue stops paho reading (back-pressure, e.g. while the database is down):
    nothing arrives, but the broker is not to blame, and the fix for deafness would mislead."""
    seams = Scripted()
    full = [True]
    monitor = seams.monitor(saturated=lambda: full[0])
    for t in range(0, 60, 1):
        seams.now = t
        assert monitor.tick() == []
    full[0] = False
    for t in range(60, 81, 1):
        seams.now = t
        monitor.tick()
    assert [p.reason for p in monitor.problems()] == [DEAF]  # once reading again, the deadline counts afresh


def test_with_the_server_defaults_a_deaf_subscription_is_reported_within_30_s_of_the_start() -> None:
    """The default window, on the judge and the monitor the server builds from ServerConfig's defaults
    (what the integration test against a real deaf NATS shortens with its settings)."""
    from fleet_server.config import ServerConfig

    defaults = ServerConfig()
    config = LivenessConfig(defaults.ingest_silence_seconds, defaults.probe_interval_seconds,
                            defaults.probe_deadline_seconds)
    assert config == LivenessConfig()  # the server's defaults are the judge's
    seams = Scripted()
    monitor = LivenessMonitor(config, probe_topic="edgefleet/v1/devices/edgefleet-probe-x/events",
                              publish=seams.publish, connected=lambda: True, last_delivery=lambda: None,
                              last_device_message=lambda: None, enrolled=lambda: 0, monotonic=lambda: seams.now)
    reported = None
    for tick in range(0, 31):  # one tick a second (TICK_S), the first at once
        seams.now = float(tick)
        if reported is None and [p.reason for p in monitor.tick()] == [DEAF]:
            reported = seams.now
    assert reported == config.probe_deadline_s == 15.0  # the first probe at 0 s, unanswered for 15 s
    assert seams.published[0] == "edgefleet/v1/devices/edgefleet-probe-x/events"
