"""A candidate's stage on a real agent (issue 18): real Mosquitto, a real fleet server, real agent processes.

The server's rollout stage is another part of issue 18; here the assignment that carries the
candidate is signed with the server's own director key (its keys directory) and published on the
device's ``desired`` topic as the server's MQTT user, exactly as the server publishes one, and the
bundles are real TUF targets pushed with ``edgefleet models push``. What the agent does with it is
then seen from outside only: its predict answers, its events, its telemetry on the broker, its
``/metrics``, ``edgefleet agent status``, and its files after a SIGKILL.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet import telemetry, topics
from edgefleet.assignment import Assignment, Candidate, DirectorSigner, ModelTarget
from edgefleet.bundle import read_bundle
from simulation.fleet import mosquitto_binary
from tests.integration.shadow.bundles import live_rows, make_shifted_bundle
from tests.support.bundles import make_onnx_bundle
from tests.support.fleet import Fleet, FleetAgent, cli, fleet, wait_for

MODEL = "digits"


@dataclass(frozen=True)
class Bundles:
    v1: Path
    good: Path       # 1.1.0: the same model, a new version: agrees everywhere
    shifted: Path    # 1.2.0: passes its golden samples, disagrees on the live rows
    live: list[list[float]]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    directory = tmp_path_factory.mktemp("shadow-bundles")
    v1 = make_onnx_bundle(directory, name=MODEL, version="1.0.0")
    return Bundles(v1, make_onnx_bundle(directory, name=MODEL, version="1.1.0"),
                   make_shifted_bundle(v1, directory, "1.2.0"), live_rows(read_bundle(v1).golden()["inputs"], 64))


@pytest.fixture
def running_fleet(tmp_path: Path) -> Iterator[Fleet]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (scripts/test does this)")
    yield from fleet(tmp_path)


class Director:
    """Signs and publishes assignments as the server does: its director key, its MQTT user, retained."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.signer = DirectorSigner.from_pem((fleet.server.data_dir / "keys" / "director.pem").read_bytes())
        self.counter = 1_000_000  # above anything the server itself may have issued this device

    def target(self, pushed: dict[str, Any]) -> ModelTarget:
        return ModelTarget(str(pushed["version"]), str(pushed["target_path"]), str(pushed["sha256"]),
                           int(pushed["length"]))

    def assign(self, agent: FleetAgent, entry: ModelTarget, rollout: str = "ro-shadow") -> None:
        self.counter += 1
        now = datetime.now(UTC)
        envelope = self.signer.sign(Assignment(agent.device_id, self.counter, now - timedelta(seconds=5),
                                               now + timedelta(hours=1), rollout, {MODEL: entry}))
        self.fleet.events.publish(topics.desired(agent.device_id), envelope, retain=True)


class Batches:
    """Every telemetry batch the agents publish, decoded, read as the server's MQTT user."""

    def __init__(self, fleet: Fleet) -> None:
        self.batches: list[telemetry.TelemetryBatch] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        user, password = fleet.server.mqtt_credentials()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"shadow-tm-{time.monotonic_ns()}")
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{topics.PREFIX}/devices/+/telemetry", qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", fleet.broker.port, keepalive=10)
        self.client.loop_start()
        assert ready.wait(10), "could not subscribe to telemetry"

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self._lock:
            self.batches.append(telemetry.decode(message.payload))

    def shadow(self) -> list[telemetry.ShadowRecord]:
        with self._lock:
            return [r for b in self.batches for r in b.shadow]

    def models(self) -> list[telemetry.ModelRecord]:
        with self._lock:
            return [r for b in self.batches for r in b.models]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _start(fleet: Fleet, bundles: Bundles, env: dict[str, str] | None = None) -> tuple[FleetAgent, Director,
                                                                                         dict[str, Any]]:
    agent = fleet.enroll("pi-0", labels={"site": "lab"}, install=bundles.v1)
    agent.settings["telemetry_interval_s"] = 1.0
    agent.start(env or {})
    fleet.wait_online([agent])
    director = Director(fleet)
    return agent, director, fleet.server.push(bundles.v1)


def _metrics(agent: FleetAgent) -> dict[str, float]:
    """The agent's /metrics samples whose name starts with edgefleet_agent_shadow_, by name."""
    text = httpx.get(f"{agent.url}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("edgefleet_agent_shadow_"):
            name, _, value = line.rpartition(" ")
            out[name.split("{")[0]] = float(value)
    return out


def test_a_shifted_candidate_in_shadow_never_answers_and_its_disagreement_is_reported(
        running_fleet: Fleet, bundles: Bundles) -> None:
    fleet = running_fleet
    batches = Batches(fleet)
    agent, director, v1 = _start(fleet, bundles)
    shifted = director.target(fleet.server.push(bundles.shifted))
    director.assign(agent, director.target(v1).with_candidate(Candidate.shadow(shifted, 1.0)))
    agent.wait_update("shadow", 30, version="1.2.0")
    # The report and the events are separate messages: the shadowing event may land just after.
    wait_for(lambda: fleet.events.of(agent.device_id, "shadowing"), 10, "the shadowing event")
    assert [e["event"] for e in fleet.events.of(agent.device_id)][-2:] == ["health_passed", "shadowing"]
    answered: set[str] = set()
    with httpx.Client(base_url=agent.url, timeout=10) as client:
        for _ in range(4):
            for row in bundles.live:
                response = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": [row]})
                assert response.status_code == 200, response.text
                answered.add(response.json()["version"])
    assert answered == {"1.0.0"}, "the candidate answered a request in shadow mode"
    sent = 4 * len(bundles.live)
    figures = wait_for(lambda: (m := _metrics(agent)) and m.get("edgefleet_agent_shadow_compared_total", 0)
                       + m.get("edgefleet_agent_shadow_skipped_total", 0) >= sent and m, 20,
                       "every mirrored request compared or skipped", explain=agent.log)
    compared = figures["edgefleet_agent_shadow_compared_total"]
    assert compared >= sent / 2, figures  # an idle agent sheds little
    assert figures["edgefleet_agent_shadow_agreement_ratio"] < 0.8, figures
    assert figures["edgefleet_agent_shadow_errors_total"] == 0
    # The same figures on the broker, in the `sh` records of the telemetry batches.
    records = wait_for(lambda: (r := batches.shadow()) and sum(x.compared for x in r) >= compared and r, 20,
                       "the shadow records in telemetry", explain=agent.log)
    total = telemetry.shadow_figures(records)
    assert (total.model, total.version, total.serving) == (MODEL, "1.2.0", "1.0.0")
    assert total.compared == compared and total.agreement is not None and total.agreement < 0.8
    assert sum(total.serving_buckets) == total.compared == sum(total.candidate_buckets)
    assert telemetry.bucket_quantile(total.candidate_buckets, 0.99) is not None
    assert all(r.version != "1.2.0" for r in batches.models()), "the candidate has a model record: it answered"
    status = cli("agent", "status", "--state-dir", str(agent.state_dir))  # no socket here: read from update.json
    assert "stage: shadow of digits 1.2.0" in status.stdout, status.stdout
    live = httpx.get(f"{agent.url}/v1/status", timeout=5).json()  # what `agent status` shows from a running daemon
    assert live["update"]["state"] == "shadow" and live["candidates"][0]["mode"] == "shadow"
    assert live["candidates"][0]["version"] == "1.2.0" and live["candidates"][0]["compared"] >= compared
    assert agent.active_version(MODEL) == "1.0.0"
    batches.close()


def test_a_good_candidate_agrees_and_its_promotion_reuses_the_staged_bundle(
        running_fleet: Fleet, bundles: Bundles) -> None:
    fleet = running_fleet
    agent, director, v1 = _start(fleet, bundles)
    good = director.target(fleet.server.push(bundles.good))
    director.assign(agent, director.target(v1).with_candidate(Candidate.shadow(good, 1.0)))
    agent.wait_update("shadow", 30, version="1.1.0")
    with httpx.Client(base_url=agent.url, timeout=10) as client:
        for row in bundles.live:
            assert client.post(f"/v1/models/{MODEL}/predict", json={"inputs": [row]}).json()["version"] == "1.0.0"
    figures = wait_for(lambda: (m := _metrics(agent)) and m.get("edgefleet_agent_shadow_compared_total", 0) > 0
                       and m, 20, "shadow comparisons", explain=agent.log)
    assert figures["edgefleet_agent_shadow_agreement_ratio"] == 1.0, figures
    director.assign(agent, good)  # promotion: the candidate is now the version
    agent.wait_update("activated", 30, version="1.1.0")
    downloaded = fleet.events.of(agent.device_id, "downloaded")[-1]
    assert downloaded["version"] == "1.1.0" and downloaded["details"].get("reused") is True
    assert agent.predict(MODEL, bundles.live[:1]).json()["version"] == "1.1.0"


def test_a_canary_answers_its_share_under_its_version_and_feedback_is_kept_per_arm(
        running_fleet: Fleet, bundles: Bundles) -> None:
    fleet = running_fleet
    agent, director, v1 = _start(fleet, bundles)
    shifted = director.target(fleet.server.push(bundles.shifted))
    director.assign(agent, director.target(v1).with_candidate(Candidate.canary(shifted, 0.3)))
    agent.wait_update("canary", 30, version="1.2.0")
    answers: list[dict[str, Any]] = []
    with httpx.Client(base_url=agent.url, timeout=10) as client:
        for i in range(400):
            response = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": [bundles.live[i % 64]]})
            assert response.status_code == 200
            answers.append(response.json())
        share = sum(a["version"] == "1.2.0" for a in answers) / len(answers)
        assert 0.2 < share < 0.4, share
        # Label every answer with what the serving version says (the "truth" here): the serving arm
        # is always right, the shifted arm mostly wrong, and each arm's accuracy is its own.
        # The serving version's answer to every live row (asked until the serving arm answers: the
        # canary may take any request, this one included).
        reference: dict[str, Any] = {}
        while reference.get("version") != "1.0.0":
            reference = client.post(f"/v1/models/{MODEL}/predict", json={"inputs": bundles.live}).json()
        for i, answer in enumerate(answers):
            label = reference["predictions"][i % 64]
            client.post("/v1/feedback", json={"request_id": answer["request_id"], "label": label})
    text = httpx.get(f"{agent.url}/metrics", timeout=5).text
    accuracy = {line.split('version="')[1].split('"')[0]: float(line.rpartition(" ")[2])
                for line in text.splitlines() if line.startswith("edgefleet_agent_feedback_accuracy_ratio")}
    assert accuracy.get("1.0.0") == 1.0, accuracy
    assert accuracy.get("1.2.0") is not None and accuracy["1.2.0"] < 0.8, accuracy
    assert agent.active_version(MODEL) == "1.0.0"


def test_a_candidate_over_the_memory_budget_is_refused_with_the_reason(running_fleet: Fleet, bundles: Bundles) -> None:
    fleet = running_fleet
    # generic-x86_64 has 4096 MB; 0.005 of it (20 MB) is less than the agent holds with one model.
    agent, director, v1 = _start(fleet, bundles, {"EDGEFLEET_CANDIDATE_RAM_SHARE": "0.005"})
    good = director.target(fleet.server.push(bundles.good))
    director.assign(agent, director.target(v1).with_candidate(Candidate.shadow(good, 1.0)))
    failed = wait_for(lambda: fleet.events.of(agent.device_id, "failed"), 30, "the candidate's refusal",
                      explain=agent.log)[-1]
    assert failed["reason"] == "memory_budget" and failed["version"] == "1.1.0"
    assert "does not fit" in failed["details"]["message"] and failed["details"]["memory"]["budget_mb"] < 21
    assert agent.update()["state"] == "failed" and agent.update()["reason"] == "memory_budget"
    assert agent.predict(MODEL, bundles.live[:1]).json()["version"] == "1.0.0"


@pytest.mark.parametrize("kill_at", ["staged", "shadow"])
def test_sigkill_during_the_stage_serves_the_old_version_and_the_stage_resumes(
        running_fleet: Fleet, bundles: Bundles, kill_at: str) -> None:
    fleet = running_fleet
    # "staged": paused by the fault hook right after update.json says staged; "shadow": the stage
    # runs (it lasts until an assignment ends it), its `shadowing` event is out, and it is mirroring.
    agent, director, v1 = _start(fleet, bundles, {"EDGEFLEET_FAULT_PAUSE_AT": kill_at} if kill_at == "staged" else {})
    shifted = director.target(fleet.server.push(bundles.shifted))
    director.assign(agent, director.target(v1).with_candidate(Candidate.shadow(shifted, 1.0)))
    agent.wait_update(kill_at, 30, version="1.2.0")
    if kill_at == "shadow":
        wait_for(lambda: fleet.events.of(agent.device_id, "shadowing"), 10, "the shadowing event")
        assert agent.predict(MODEL, bundles.live[:4]).json()["version"] == "1.0.0"
    agent.kill()
    assert agent.active_version(MODEL) == "1.0.0"  # the candidate never touched the pointer
    agent.start()
    assert agent.predict(MODEL, bundles.live[:1]).json()["version"] == "1.0.0"  # at once, before the stage resumes
    agent.wait_update("shadow", 30, version="1.2.0")
    shadowing = wait_for(lambda: (e := fleet.events.of(agent.device_id, "shadowing"))
                         and len(e) == (2 if kill_at == "shadow" else 1) and e, 10,
                         "the resumed stage's shadowing event")
    assert shadowing[-1]["version"] == "1.2.0"
    with httpx.Client(base_url=agent.url, timeout=10) as client:
        for row in bundles.live[:16]:
            assert client.post(f"/v1/models/{MODEL}/predict", json={"inputs": [row]}).json()["version"] == "1.0.0"
    wait_for(lambda: _metrics(agent).get("edgefleet_agent_shadow_compared_total", 0) > 0, 20,
             "the resumed stage comparing", explain=agent.log)
    assert json.loads((agent.state_dir / "models" / MODEL / "active.json").read_text())["version"] == "1.0.0"
