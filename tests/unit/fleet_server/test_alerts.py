"""Alert episodes fire once and resolve once, rules come from TOML, and events reach real sinks."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drift import DriftWindow
from edgefleet import telemetry
from edgefleet.telemetry import ReferenceProfile
from fleet_server.telemetry.alert_sinks import (
    AlertDeliveryError,
    CommandSink,
    LogSink,
    WebhookSink,
    dispatch,
    sinks_from_config,
)
from fleet_server.telemetry.alerts import (
    DEFAULT_DRIFT_MIN_ROWS,
    AlertConfigError,
    AlertEvaluator,
    AlertEvent,
    Observation,
    Rule,
    drift_observations,
    load_alert_config,
    model_observations,
    read_alert_config,
)
from fleet_server.telemetry.drift import DeviceCounts, Totals, fleet_drift

DRIFT = Rule("digits-drift", "drift", threshold=0.25, resolve=0.1, match="digits@*")
ACCURACY = Rule("digits-accuracy", "accuracy", threshold=0.8, resolve=0.85)


def run(evaluator: AlertEvaluator, kind: str, subject: str, values: list[float], start: float = 0.0,
        step: float = 60.0) -> list[AlertEvent]:
    events = []
    for i, value in enumerate(values):
        events += evaluator.evaluate([Observation(kind, subject, value)], now=start + i * step)
    return events


# ---- episodes ----------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(inside=st.lists(st.floats(0.1, 0.25), max_size=40), peak=st.floats(0.2501, 5.0),
       calm=st.floats(0.0, 0.0999), before=st.lists(st.floats(0.0, 0.25), max_size=10))
def test_oscillation_inside_the_band_fires_once_and_resolves_once(
        inside: list[float], peak: float, calm: float, before: list[float]) -> None:
    evaluator = AlertEvaluator([DRIFT])
    events = run(evaluator, "drift", "digits@1.0.0", [*before, peak, *inside, calm, *inside])
    assert [e.state for e in events] == ["firing", "resolved"]
    assert events[0].value == peak and events[1].value == calm
    assert events[0].episode == events[1].episode


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), max_size=60))
def test_accuracy_episodes_alternate_and_follow_the_edges(values: list[float]) -> None:
    events = run(AlertEvaluator([ACCURACY]), "accuracy", "digits@1.0.0", values)
    states = [e.state for e in events]
    assert states == ["firing", "resolved"] * (len(states) // 2) + ["firing"] * (len(states) % 2)
    assert all(e.value < 0.8 for e in events if e.state == "firing")
    assert all(e.value > 0.85 for e in events if e.state == "resolved")
    # A reference model of the rule: firing from a value under the floor until one over 0.85.
    firing, expected = False, 0
    for v in values:
        if not firing and v < 0.8:
            firing, expected = True, expected + 1
        elif firing and v > 0.85:
            firing = False
    assert states.count("firing") == expected


def test_for_s_needs_the_breach_to_last_with_injected_time() -> None:
    rule = Rule("errors", "error_rate", threshold=0.05, for_s=300)
    evaluator = AlertEvaluator([rule])
    assert run(evaluator, "error_rate", "digits@1.0.0", [0.2, 0.2, 0.0, 0.2], step=120) == []  # broken at 240 s
    evaluator = AlertEvaluator([rule])
    events = run(evaluator, "error_rate", "digits@1.0.0", [0.2, 0.2, 0.2, 0.2], step=120)
    assert [(e.state, e.ts, e.started_at) for e in events] == [("firing", 360.0, 0.0)]


def test_subjects_are_separate_episodes_and_match_filters_them() -> None:
    evaluator = AlertEvaluator([DRIFT])
    events = evaluator.evaluate([Observation("drift", "digits@1.0.0 site=a", 0.4),
                                 Observation("drift", "digits@1.0.0 site=b", 0.5),
                                 Observation("drift", "iris@2.0.0", 0.9),
                                 Observation("accuracy", "digits@1.0.0", 0.0)], now=0.0)
    assert sorted(e.subject for e in events) == ["digits@1.0.0 site=a", "digits@1.0.0 site=b"]
    assert len(evaluator.active()) == 2


def test_missing_data_neither_fires_nor_resolves() -> None:
    evaluator = AlertEvaluator([DRIFT])
    assert len(evaluator.evaluate([Observation("drift", "digits@1.0.0", 0.4)], now=0.0)) == 1
    assert evaluator.evaluate([], now=60.0) == []
    assert evaluator.evaluate([Observation("drift", "digits@1.0.0", float("nan"))], now=120.0) == []
    assert len(evaluator.active()) == 1


def test_drift_from_fewer_rows_than_min_rows_neither_fires_nor_resolves() -> None:
    evaluator = AlertEvaluator([replace(DRIFT, min_rows=200)])
    subject = "digits@1.0.0 site=a"
    # 24 unshifted rows score a PSI of ~1.7 (the demo's false alarm): not evidence either way.
    assert evaluator.evaluate([Observation("drift", subject, 1.7, rows=24)], now=0.0) == []
    assert evaluator.state() == []
    (fired,) = evaluator.evaluate([Observation("drift", subject, 0.4, rows=200)], now=60.0)
    assert fired.state == "firing" and fired.value == 0.4
    assert evaluator.evaluate([Observation("drift", subject, 0.01, rows=199)], now=120.0) == []
    assert [e.subject for e in evaluator.active()] == [subject]
    (resolved,) = evaluator.evaluate([Observation("drift", subject, 0.01, rows=450)], now=180.0)
    assert resolved.state == "resolved"


def test_min_rows_applies_to_drift_only_and_zero_judges_any_sample() -> None:
    offline = Rule("down", "offline", threshold=0.5, match="fleet")
    evaluator = AlertEvaluator([replace(DRIFT, min_rows=0), offline])
    events = evaluator.evaluate([Observation("drift", "digits@1.0.0", 3.0, rows=10),
                                 Observation("offline", "fleet", 2.0)], now=0.0)
    assert sorted(e.rule.name for e in events) == ["digits-drift", "down"]


def test_drift_observations_carry_the_rows_of_their_report() -> None:
    reference = ReferenceProfile.from_dict({"rows": 100, "features": [
        {"name": "f0", "edges": [0.0, 1.0, 2.0, 3.0], "counts": [30, 40, 30]}]})
    devices = [DeviceCounts(f"d{i}", "rpi4-64", {"site": site}, ((n, 10, 10),), (), Totals())
               for i, (site, n) in enumerate([("a", 20), ("a", 5), ("b", 7)])]
    observations = drift_observations(fleet_drift("digits", "1.0.0", reference, devices, by="site"))
    rows = {o.subject: o.rows for o in observations}
    assert rows == {"digits@1.0.0 site=a": 65, "digits@1.0.0 site=b": 27}


def test_a_restarted_evaluator_keeps_its_episodes_and_does_not_fire_again() -> None:
    first = AlertEvaluator([DRIFT])
    (fired,) = first.evaluate([Observation("drift", "digits@1.0.0", 0.4)], now=0.0)
    saved = json.loads(json.dumps(first.state()))
    second = AlertEvaluator([DRIFT], saved)
    assert second.evaluate([Observation("drift", "digits@1.0.0", 0.5)], now=60.0) == []
    (resolved,) = second.evaluate([Observation("drift", "digits@1.0.0", 0.01)], now=120.0)
    assert resolved.state == "resolved" and resolved.episode == fired.episode
    assert AlertEvaluator([ACCURACY], saved).state() == []  # a rule removed from config is forgotten


def test_halted_rollout_and_offline_devices() -> None:
    config = load_alert_config({"alerts": {"rules": [
        {"name": "halted", "kind": "rollout_halted"},
        {"name": "offline", "kind": "offline", "threshold": 2, "match": "site=*"}]}})
    evaluator = AlertEvaluator(config.rules)
    events = evaluator.evaluate([Observation("rollout_halted", "rollout:7", 1), Observation("offline", "site=a", 3)], now=0)
    assert sorted((e.rule.name, e.state) for e in events) == [("halted", "firing"), ("offline", "firing")]
    events = evaluator.evaluate([Observation("rollout_halted", "rollout:7", 0), Observation("offline", "site=a", 2)], now=60)
    assert [(e.rule.name, e.state) for e in events] == [("halted", "resolved")]  # 2 is not past "above 2"
    events = evaluator.evaluate([Observation("offline", "site=a", 1)], now=120)
    assert [(e.rule.name, e.state) for e in events] == [("offline", "resolved")]


def test_model_observations_name_subjects_and_skip_missing_data() -> None:
    totals = Totals(count=200, errors={"inference": 3, "input": 1}, labels=10, correct=7)
    assert model_observations("digits", "1.0.0", totals, "site=b") == [
        Observation("error_rate", "digits@1.0.0 site=b", 0.02), Observation("accuracy", "digits@1.0.0 site=b", 0.7)]
    assert model_observations("digits", "1.0.0", Totals()) == []


def test_event_json_says_what_crossed_what() -> None:
    (event,) = AlertEvaluator([DRIFT]).evaluate([Observation("drift", "digits@1.0.0", 0.41)], now=1000.0)
    document = event.to_dict()
    assert document["alert"] == "digits-drift" and document["state"] == "firing"
    assert document["threshold"] == 0.25 and document["resolve"] == 0.1 and document["ts"] == 1000.0
    assert event.message == "drift of digits@1.0.0 is 0.41, above 0.25 (rule digits-drift)"


# ---- config ------------------------------------------------------------------------------

CONFIG = """
[server]
port = 8080

[alerts]
webhook = "http://127.0.0.1:9/hook"
webhook_timeout_s = 2
retrain_command = ["/usr/bin/env", "retrain"]

[[alerts.rules]]
name = "digits-drift"
kind = "drift"
band = "drift"
match = "digits@*"
for_s = 300
retrain = true
min_rows = 500

[[alerts.rules]]
name = "accuracy-floor"
kind = "accuracy"
threshold = 0.8
resolve = 0.85
"""


def test_rules_are_read_from_the_alerts_table_of_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(CONFIG)
    config = read_alert_config(path)
    drift, accuracy = config.rules
    assert (drift.threshold, drift.resolve_at, drift.for_s, drift.retrain) == (0.25, 0.1, 300.0, True)
    assert (accuracy.direction, accuracy.threshold, accuracy.resolve_at) == ("below", 0.8, 0.85)
    assert drift.min_rows == 500 and accuracy.min_rows == DEFAULT_DRIFT_MIN_ROWS == 200
    assert config.webhook_timeout_s == 2.0 and config.retrain_command == ("/usr/bin/env", "retrain")
    assert [s.name for s in sinks_from_config(config)] == ["log", "webhook", "retrain"]
    assert load_alert_config({}).rules == ()


@pytest.mark.parametrize(("table", "problem"), [
    ({"rules": [{"name": "x", "kind": "drift", "threshold": 0.2, "colour": "red"}]}, "unknown key(s) colour"),
    ({"rules": [{"name": "x", "kind": "latency", "threshold": 1}]}, "kind 'latency'"),
    ({"rules": [{"name": "x", "kind": "drift"}]}, "no threshold"),
    ({"rules": [{"name": "x", "kind": "error_rate", "band": "drift"}]}, "only for drift rules"),
    ({"rules": [{"name": "x", "kind": "drift", "threshold": 0.2, "resolve": 0.3}]}, "resolve 0.3 is above threshold"),
    ({"rules": [{"name": "x", "kind": "accuracy", "threshold": 0.8, "resolve": 0.7}]}, "resolve 0.7 is below threshold"),
    ({"rules": [{"name": "x", "kind": "drift", "threshold": "high"}]}, "must be a number"),
    ({"rules": [{"name": "x", "kind": "drift", "threshold": 0.2}] * 2}, "used twice"),
    ({"rules": [{"name": "x", "kind": "drift", "threshold": 0.2, "retrain": True}]}, "no retrain_command"),
    ({"rules": [{"name": "x", "kind": "drift", "threshold": float("nan")}]}, "must be finite"),
    ({"rules": [{"name": "x", "kind": "offline", "threshold": 1, "min_rows": 10}]}, "min_rows is only for drift"),
    ({"rules": [{"name": "x", "kind": "drift", "threshold": 0.2, "min_rows": 50.5}]}, "min_rows must be a whole"),
    ({"rules": [{"name": "x", "kind": "drift", "threshold": 0.2, "min_rows": True}]}, "min_rows must be a whole"),
    ({"rules": [{"name": "x", "kind": "drift", "threshold": 0.2, "min_rows": -1}]}, "min_rows must be a whole"),
    ({"webhook": "ftp://x"}, "not an http(s) URL"),
    ({"webhok": "http://x"}, "unknown key(s) webhok"),
])
def test_malformed_alert_config_is_refused_naming_the_key(table: dict[str, Any], problem: str) -> None:
    with pytest.raises(AlertConfigError) as caught:
        load_alert_config({"alerts": table})
    assert problem in str(caught.value) and caught.value.fix


# ---- sinks -------------------------------------------------------------------------------

class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"content_type": self.headers["Content-Type"], "body": json.loads(body)})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"received": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()
        server.server_close()


def drift_episode() -> list[AlertEvent]:
    rule = Rule("digits-drift", "drift", threshold=0.25, resolve=0.1, retrain=True)
    return run(AlertEvaluator([rule]), "drift", "digits@1.0.0", [0.3, 0.2, 0.05])


def test_webhook_receives_firing_then_resolved_json(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    assert dispatch(drift_episode(), [WebhookSink(url)]) == []
    assert [r["body"]["state"] for r in handler.received] == ["firing", "resolved"]
    assert handler.received[0]["content_type"] == "application/json"
    assert handler.received[0]["body"]["subject"] == "digits@1.0.0"


def test_a_failing_webhook_is_reported_and_does_not_stop_the_other_sinks(
        receiver: tuple[str, type[_Receiver]], caplog: pytest.LogCaptureFixture) -> None:
    url, handler = receiver
    handler.status = 500
    with caplog.at_level(logging.INFO, logger="fleet_server.telemetry.alerts"):
        failures = dispatch(drift_episode(), [WebhookSink(url), LogSink(), WebhookSink("http://127.0.0.1:9/x", timeout_s=1)])
    assert [(f.sink, f.event.state) for f in failures] == [("webhook", "firing"), ("webhook", "firing"),
                                                          ("webhook", "resolved"), ("webhook", "resolved")]
    assert "answered 500" in str(failures[0].error) and "could not be reached" in str(failures[1].error)
    logged = [r.getMessage() for r in caplog.records if r.name == "fleet_server.telemetry.alerts" and "not delivered" not in r.getMessage()]
    assert logged[0].startswith("alert digits-drift [firing]: drift of digits@1.0.0 is 0.3")
    assert logged[1].startswith("alert digits-drift [resolved]:")


def test_retraining_command_gets_the_firing_alert_on_stdin_only(tmp_path: Path) -> None:
    out = tmp_path / "stdin.jsonl"
    script = f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')"
    assert dispatch(drift_episode(), [CommandSink([sys.executable, "-c", script])]) == []
    lines = out.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["state"] == "firing"
    assert json.loads(lines[0])["retrain"] is True


def test_retraining_command_failures_name_the_problem(tmp_path: Path) -> None:
    (firing, _) = drift_episode()[:2]
    with pytest.raises(AlertDeliveryError, match="exited 3: boom"):
        CommandSink([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"]).send(firing)
    with pytest.raises(AlertDeliveryError, match="does not exist"):
        CommandSink([str(tmp_path / "no-such-retrainer")]).send(firing)
    with pytest.raises(AlertDeliveryError, match="ran past 0 s"):
        CommandSink([sys.executable, "-c", "import time; time.sleep(5)"], timeout_s=0.2).send(firing)


# ---- from device counts to the webhook -----------------------------------------------------

def test_shifted_inputs_on_some_devices_fire_one_drift_alert_then_resolve(
        receiver: tuple[str, type[_Receiver]]) -> None:
    """Agents' drift counters -> wire -> fleet merge by site -> rule -> webhook, over three windows."""
    url, handler = receiver
    rng = np.random.default_rng(11)
    training = rng.normal(size=(3000, 4))
    features = []
    for i in range(4):
        edges = np.unique(np.quantile(training[:, i], np.linspace(0, 1, 11)))
        counts = np.bincount(np.searchsorted(edges[1:-1], training[:, i], side="right"), minlength=len(edges) - 1)
        features.append({"name": f"f{i}", "edges": edges.tolist(), "counts": counts.tolist()})
    reference = {"rows": 3000, "features": features}
    sites = {"dev-a1": "a", "dev-a2": "a", "dev-b1": "b"}
    windows = {d: DriftWindow(reference) for d in sites}
    evaluator = AlertEvaluator([Rule("drift", "drift", threshold=0.25, resolve=0.1, match="digits@1.0.0 site=*")])
    sinks = [WebhookSink(url)]
    seq = 0

    def window_of_traffic(now: float, shift_b: float) -> list[AlertEvent]:
        nonlocal seq
        devices = []
        for device, site in sites.items():
            x = rng.normal(size=(500, 4))
            if site == "b":
                x[:, 2] += shift_b
            windows[device].observe(x, now=now)
            drift, _ = windows[device].take_interval()
            seq += 1
            wire = telemetry.encode(telemetry.TelemetryBatch(device, seq, now, models=(
                telemetry.ModelRecord("digits", "1.0.0", count=500, drift=drift),)))
            batch = telemetry.decode(wire, device_id=device)
            devices.append(DeviceCounts.from_records(device, "rpi4-64", {"site": site}, batch.models))
        reports = fleet_drift("digits", "1.0.0", ReferenceProfile.from_dict(reference), devices, by="site")
        events = evaluator.evaluate(drift_observations(reports), now=now)
        assert dispatch(events, sinks) == []
        return events

    assert window_of_traffic(0.0, shift_b=0.0) == []
    fired = window_of_traffic(60.0, shift_b=1.5)
    assert [(e.state, e.subject) for e in fired] == [("firing", "digits@1.0.0 site=b")]
    assert window_of_traffic(120.0, shift_b=1.4) == []  # still drifting: no second alert
    resolved = window_of_traffic(180.0, shift_b=0.0)
    assert [(e.state, e.subject) for e in resolved] == [("resolved", "digits@1.0.0 site=b")]
    assert [r["body"]["state"] for r in handler.received] == ["firing", "resolved"]
