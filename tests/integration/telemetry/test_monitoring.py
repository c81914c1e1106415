"""The server side of monitoring, end to end on a running server with a real Mosquitto.

Devices' telemetry arrives over MQTT; the fleet views, the CLI, /metrics and the alert loop
read it back. Drift: two devices at site b send inputs piled into each feature's last bin,
two at site a send the reference's own distribution; the alert fires once at a real local
webhook, survives a restarted monitor without firing again, and resolves when site b's
inputs return to normal. Time is injected into the alert loop, not slept on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from edgefleet import telemetry, topics
from edgefleet.bundle import read_bundle
from edgefleet.cli import main
from fleet_server.telemetry.alerts import AlertConfig, Rule
from fleet_server.telemetry.monitor import AlertMonitor
from simulation.fleet import MosquittoProcess
from tests.integration.server.harness import RunningServer, server_config
from tests.integration.telemetry.conftest import Webhook
from tests.integration.telemetry.fleet import (
    add_device,
    batch,
    record,
    reference_counts,
    shifted_counts,
)

ADMIN = {"Authorization": "Bearer test-admin-token"}
WINDOW = 600.0


class ServerClock:
    """The server's clock, which the test moves forward: the ingest stores a batch dated more than
    5 minutes past the server's now at the server's now (docs/telemetry.md, "Refused messages")."""

    def __init__(self) -> None:
        self.ahead_s = 0.0

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.ahead_s, UTC)


@pytest.fixture
def server_clock() -> ServerClock:
    return ServerClock()


@pytest.fixture
def server(tmp_path: Path, database_url: str, mosquitto: MosquittoProcess, webhook: Webhook,
           digits_bundle: Path, server_clock: ServerClock) -> Iterator[RunningServer]:
    alerts = AlertConfig(rules=(Rule.from_dict({"name": "site-drift", "kind": "drift", "band": "drift",
                                                "match": "digits@1.0.0 site=*"}),
                                Rule.from_dict({"name": "offline", "kind": "offline", "threshold": 0,
                                                "match": "fleet"})),
                         webhook=webhook.url, evaluate_every_s=3600)  # the loop's own thread stays idle
    config = server_config(tmp_path / "data", database_url, broker_url=mosquitto.url, alerts=alerts,
                           telemetry_window_seconds=WINDOW)
    with RunningServer(config, clock=server_clock) as running:
        running.ctx.registry.push(digits_bundle)
        assert running.ctx.mqtt.wait_connected(10)
        yield running


class Devices:
    """Fake devices publishing real encoded batches over MQTT, with their own seq counters."""

    def __init__(self, broker: MosquittoProcess) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-devices")
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.seq: dict[str, int] = {}
        self.sent = 0

    def send(self, device: str, ts: float, *records: Any, dropped: int = 0, copies: int = 1) -> None:
        seq = self.seq[device] = self.seq.get(device, -1) + 1
        payload = telemetry.encode(batch(device, seq, ts, *records, dropped=dropped))
        for _ in range(copies):
            self.client.publish(topics.telemetry(device), payload, qos=1).wait_for_publish(10)
            self.sent += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _wait_stored(server: RunningServer, sent: int) -> None:
    deadline = time.monotonic() + 20
    while server.ctx.ingest.counts().received < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.ctx.ingest.drain(20)


def _metrics(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_drift_alert_fires_once_and_resolves_and_views_show_it(
        server: RunningServer, mosquitto: MosquittoProcess, webhook: Webhook, digits_bundle: Path,
        capsys: pytest.CaptureFixture[str], server_clock: ServerClock) -> None:
    ctx = server.ctx
    reference = read_bundle(digits_bundle).reference()
    normal, shifted = reference_counts(reference), shifted_counts(reference)
    sites = {"dev-a1": "a", "dev-a2": "a", "dev-b1": "b", "dev-b2": "b"}
    for device, site in sites.items():
        add_device(ctx.db, device, labels={"site": site}, models={"digits": "1.0.0"})
    add_device(ctx.db, "dev-off", online=False)
    devices = Devices(mosquitto)
    t0 = time.time()
    try:
        for device, site in sites.items():
            devices.send(device, t0 - 300, record(drift=shifted if site == "b" else normal, feedback=(10, 9),
                                                  p95=2.0 if site == "b" else 1.0),
                         dropped=3 if device == "dev-a1" else 0, copies=2)
        _wait_stored(server, devices.sent)

        # the fleet views: API, CLI
        listed = {d["id"]: d for d in httpx.get(f"{server.url}/api/v1/devices", headers=ADMIN).json()}
        assert listed["dev-b1"]["drift_band"] == "drift" and listed["dev-a1"]["drift_band"] == "stable"
        assert listed["dev-b1"]["p95_ms"] == 2.0 and listed["dev-b1"]["versions"] == {"digits": "1.0.0"}
        assert listed["dev-off"]["state"] == "offline" and listed["dev-off"]["drift_band"] is None
        view = httpx.get(f"{server.url}/api/v1/models/digits/1.0.0/drift", params={"by": "label:site"},
                         headers=ADMIN).json()
        groups = {g["group"]: g for g in view["groups"]}
        assert groups["site=b"]["band"] == "drift" and groups["site=a"]["band"] == "stable"
        assert groups["site=a"]["max_psi"] < 0.01 and groups["site=b"]["devices"] == 2
        assert len(groups["site=b"]["features"]) == len(reference["features"])
        assert view["versions"] == [{"version": "1.0.0", "devices": 4, "requests": 400, "errors": 0,
                                     "error_rate": 0.0, "labels": 40, "correct": 36, "accuracy": 0.9}]
        code = main(["models", "drift", "digits@1.0.0", "--by", "label:site", "--server", server.url,
                     "--token", "test-admin-token"])
        out = capsys.readouterr().out
        assert code == 0 and "site=b: 2 device(s), band drift" in out and "accuracy 0.900" in out
        code = main(["devices", "list", "--server", server.url, "--token", "test-admin-token"])
        out = capsys.readouterr().out
        assert code == 0 and "p95 ms" in out and "digits@1.0.0" in out

        # the alert: fires once per episode, at the webhook and nowhere twice
        events = ctx.monitor.evaluate(now=t0)
        assert sorted((e.rule.name, e.subject, e.state) for e in events) == [
            ("offline", "fleet", "firing"), ("site-drift", "digits@1.0.0 site=b", "firing")]
        drift_hooks = [h for h in webhook.received if h["alert"] == "site-drift"]
        assert [(h["state"], h["subject"]) for h in drift_hooks] == [("firing", "digits@1.0.0 site=b")]
        assert drift_hooks[0]["value"] > 0.25
        assert ctx.monitor.evaluate(now=t0 + 3600) == []
        restarted = AlertMonitor(ctx.db, ctx.fleet_views, ctx.config.alerts)
        assert restarted.evaluate(now=t0 + 2 * 3600 - 250) == []  # episodes came from the database

        metrics = _metrics(server)
        assert metrics[("edgefleet_alerts", (("rule", "site-drift"), ("state", "firing")))] == 1
        assert metrics[("edgefleet_telemetry_stored_total", ())] == 4
        assert metrics[("edgefleet_telemetry_duplicates_total", ())] == 4
        assert metrics[("edgefleet_telemetry_device_dropped_total", ())] == 3
        assert metrics[("edgefleet_devices", (("state", "offline"),))] == 1
        assert metrics[("edgefleet_devices_running", (("model", "digits"), ("version", "1.0.0")))] == 4
        assert metrics[("edgefleet_api_request_duration_seconds_count",
                        (("method", "GET"), ("route", "/api/v1/devices"), ("status", "200")))] >= 1

        # site b back to normal: the old batches leave the window and the episode resolves
        later = t0 + 3 * 3600  # a full interval after the last round (replicas skip a round done just now)
        server_clock.ahead_s = later - time.time()
        for device in sites:
            devices.send(device, later - 60, record(drift=normal))
        _wait_stored(server, devices.sent)
        events = restarted.evaluate(now=later)
        assert [(e.rule.name, e.state) for e in events] == [("site-drift", "resolved")]
        drift_hooks = [h for h in webhook.received if h["alert"] == "site-drift"]
        assert [h["state"] for h in drift_hooks] == ["firing", "resolved"]
        assert "resolved" in drift_hooks[1]["message"]
    finally:
        devices.close()


def test_metrics_parse_and_carry_rollout_progress(server: RunningServer) -> None:
    with server.ctx.db.session() as session:
        from sqlalchemy import text

        session.execute(text("INSERT INTO rollouts (id, model, version, state, spec, header, log, created_at, "
                             "updated_at) VALUES ('r1', 'digits', '1.0.0', 'halted', '{}', :header, '[]', :now, :now)"),
                        {"header": json.dumps({"stages": []}), "now": "2026-11-25 12:00:00+00:00"})
        # one row per device record (issue 13); /metrics counts them by status
        for device, status in (("d1", "committed"), ("d2", "committed"), ("d3", "failed")):
            session.execute(text("INSERT INTO rollout_devices (rollout_id, device_id, profile, status, online, "
                                 "joined_late, reason) VALUES ('r1', :device, 'rpi4-64', :status, true, false, '')"),
                            {"device": device, "status": status})
    metrics = _metrics(server)
    assert metrics[("edgefleet_rollout_devices", (("model", "digits"), ("rollout", "r1"), ("status", "committed"),
                                                  ("version", "1.0.0")))] == 2
    assert metrics[("edgefleet_rollout_info", (("model", "digits"), ("rollout", "r1"), ("state", "halted"),
                                               ("version", "1.0.0")))] == 1
    observations = server.ctx.fleet_views.observations()
    assert [(o.subject, o.value) for o in observations if o.kind == "rollout_halted"] == [("rollout:r1", 1.0)]


def _sampled_counts(reference: dict[str, Any], rows: int, rng: np.random.Generator) -> list[list[int]]:
    """``rows`` inputs drawn from the reference's own distribution: unshifted, but a real sample."""
    return [rng.multinomial(rows, np.asarray(f["counts"], float) / sum(f["counts"])).tolist()
            for f in reference["features"]]


def test_drift_alert_judges_the_api_figure_and_only_once_enough_rows_are_merged(
        server: RunningServer, mosquitto: MosquittoProcess, digits_bundle: Path) -> None:
    """Issue 6, as the demo saw it: devices on version 1 send one-second batches of ~12 rows.

    site=a is never shifted, site=b is. At every round the alert's observation for a group is
    the API's ``max_psi`` for that group at that moment; while a group has merged fewer rows
    than the rule's ``min_rows`` (default 200) its figure is noise (a PSI of 3-8 at 10-20 rows)
    and is not judged, so only site=b fires, once, with the value the API shows.
    """
    ctx = server.ctx
    reference = read_bundle(digits_bundle).reference()
    rng = np.random.default_rng(6)
    sites = {"dev-a1": "a", "dev-a2": "a", "dev-b1": "b", "dev-b2": "b"}
    for device, site in sites.items():
        add_device(ctx.db, device, labels={"site": site}, models={"digits": "1.0.0"})
    monitor = AlertMonitor(ctx.db, ctx.fleet_views, replace(ctx.config.alerts, evaluate_every_s=1.0), sinks=[])
    devices = Devices(mosquitto)
    t0 = time.time()
    fired: list[tuple[str, float, float]] = []
    try:
        for second in range(12):
            now = t0 + second  # one round a second, as in the demo; the window keeps every batch
            for device, site in sites.items():
                drift = _sampled_counts(reference, 12, rng) if site == "a" else shifted_counts(reference, 12)
                devices.send(device, now - 0.5, record(count=12, drift=drift))
            _wait_stored(server, devices.sent)
            figures = {o.subject: o for o in ctx.fleet_views.observations(now=now) if o.kind == "drift"}
            view = {g["group"]: g for g in ctx.fleet_views.model_drift("digits", "1.0.0", by="site", now=now)["groups"]}
            for group, shown in view.items():
                observed = figures[f"digits@1.0.0 {group}"]
                assert round(observed.value, 6) == shown["max_psi"]
                assert observed.rows == shown["features"][0]["rows"] == 24 * (second + 1)
            for event in monitor.evaluate(now=now):
                if event.rule.kind == "drift":
                    shown = view[event.subject.split(" ")[1]]
                    fired.append((event.subject, event.value, shown["max_psi"]))
                    assert event.state == "firing" and shown["features"][0]["rows"] >= 200
        assert [subject for subject, _, _ in fired] == ["digits@1.0.0 site=b"]
        assert round(fired[0][1], 6) == fired[0][2] > 0.25
    finally:
        devices.close()


def test_the_drift_view_says_how_old_each_groups_figures_are(server: RunningServer, mosquitto: MosquittoProcess,
                                                            digits_bundle: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17: each group carries its newest batch and its newest batch with feature counts,
    as times and ages, so a view of a device that sends features on every Nth batch says so."""
    reference = read_bundle(digits_bundle).reference()
    for device, site in (("dev-a1", "a"), ("dev-b1", "b")):
        add_device(server.ctx.db, device, labels={"site": site}, models={"digits": "1.0.0"})
    devices = Devices(mosquitto)
    t0 = time.time()
    try:
        devices.send("dev-a1", t0 - 100, record(count=12, drift=reference_counts(reference)))
        devices.send("dev-a1", t0 - 10, record(count=12))  # no feature counts on this one
        devices.send("dev-b1", t0 - 50, record(count=12, drift=reference_counts(reference)))
        _wait_stored(server, devices.sent)
    finally:
        devices.close()
    view = server.ctx.fleet_views.model_drift("digits", "1.0.0", by="site", now=t0)
    ages = {g["group"]: (g["age_s"], g["features_age_s"]) for g in view["groups"]}
    assert ages == {"site=a": (10.0, 100.0), "site=b": (50.0, 50.0)}
    assert {g["group"]: g["as_of"] for g in view["groups"]}["site=b"] == datetime.fromtimestamp(
        t0 - 50, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert main(["models", "drift", "digits@1.0.0", "--by", "label:site", "--window", "600", "--server", server.url,
                 "--token", "test-admin-token"]) == 0
    printed = capsys.readouterr().out
    assert "newest batch" in printed and "newest feature counts" in printed and " s ago" in printed, printed
