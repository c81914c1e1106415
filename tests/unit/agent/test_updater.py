"""The update path on the device, end to end in one process: a real TUF repository (fleet_server's)
served over real HTTP, real signed assignments, real bundles, onnxruntime, slots and serving table.

"Kill" tests raise a BaseException at a chosen point (what SIGKILL does to the code after it) and
start a new Updater on the same state directory, as a restarted agent would. The real-process
SIGKILL tests over MQTT live in tests/integration/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.fetcher import ResumingFetcher
from agent.probation import ProbationConfig
from agent.runtime import load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import Identity, StateDir
from agent.updater import Updater
from edgefleet.assignment import Assignment, DirectorSigner, ModelTarget
from edgefleet.profiles import load_profile
from fleet_server.trust.keys import KeyStore, init_keys
from fleet_server.trust.tuf_repo import TufRepository
from tests.unit.agent.test_fetcher import RangeServer
from tests.unit.agent.test_health import onnx_bundle

DEVICE = "dev-1"
PROFILE = "generic-x86_64"
PROBATION = ProbationConfig(duration_s=30, min_requests=5, max_restarts=3)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after the raise point runs, no except clause catches it."""


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@dataclass
class Fleet:
    """The server side (TUF repository over HTTP, director key) and one device's state dir."""

    tmp: Path
    repo: TufRepository
    director: DirectorSigner
    server: RangeServer
    state: StateDir
    clock: Clock = field(default_factory=Clock)
    counter: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    kill_on: str | None = None
    serving: ServingTable = field(default_factory=ServingTable)

    def push(self, version: str, **kwargs: Any) -> ModelTarget:
        data = onnx_bundle(version, **kwargs)
        path = f"digits/digits-{version}.tar.gz"
        info = self.repo.add_target(path, data)
        return ModelTarget(version, path, info.sha256, info.length)

    def sign(self, target: ModelTarget, counter: int | None = None, device: str = DEVICE,
             signer: DirectorSigner | None = None, expires_in: float = 3600, issued_ago: float = 0,
             rollout: str = "ro-1") -> bytes:
        if counter is None:
            self.counter += 1
            counter = self.counter
        issued = datetime.fromtimestamp(self.clock() - issued_ago, UTC)
        assignment = Assignment(device, counter, issued, issued + timedelta(seconds=expires_in), rollout,
                                {"digits": target})
        return (signer or self.director).sign(assignment)

    def publish(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event["event"] == self.kill_on:
            self.kill_on = None
            raise Killed(event["event"])

    def updater(self, **kwargs: Any) -> Updater:
        kwargs.setdefault("fetcher", ResumingFetcher(self.state.downloads_dir, read_timeout=2, connect_timeout=2))
        kwargs.setdefault("probation", PROBATION)
        return Updater(self.state, ModelStore(self.state), self.serving, self.publish, self.clock,
                       health_latency_runs=10, **kwargs)

    def restart(self, **kwargs: Any) -> Updater:
        """A new agent process: fresh serving table loaded from the active pointers, then resume()."""
        self.serving = ServingTable()
        store = ModelStore(self.state)
        for name in store.models():
            slot = store.active(name)
            assert slot is not None
            self.serving.swap(name, load_session(slot, load_profile(PROFILE)))
        updater = self.updater(**kwargs)
        updater.resume()
        return updater

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def serving_version(self) -> str | None:
        session = self.serving.get("digits")
        return session.manifest.version if session else None

    def traffic(self, n: int = 10) -> None:
        rows = np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32)
        for row in rows:
            self.serving.predict("digits", row.tolist())

    def update_json(self) -> dict[str, Any]:
        return json.loads(self.state.update_file.read_text())  # type: ignore[no-any-return]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    init_keys(tmp_path / "keys", tmp_path / "root-keys")
    keys = KeyStore.load(tmp_path / "keys")
    repo = TufRepository.create(tmp_path / "repo", keys, tmp_path / "root-keys")
    state = StateDir(tmp_path / "state").ensure()
    with RangeServer(root=tmp_path / "repo") as server:
        state.save_identity(Identity(DEVICE, server.url, "", PROFILE, {}, f"{server.url}/metadata/",
                                     f"{server.url}/targets/"))
        state.save_director_public_key(keys.director.public_b64)
        state.save_profile(load_profile(PROFILE).to_toml())
        state.save_tuf_root(repo.root_json())
        yield Fleet(tmp_path, repo, keys.director, server, state)


def install(fleet: Fleet, version: str, **kwargs: Any) -> Updater:
    updater = fleet.updater()
    assert updater.handle_assignment(fleet.sign(fleet.push(version, **kwargs))).accepted
    fleet.traffic()
    fleet.clock.t += PROBATION.duration_s
    updater.tick()
    assert fleet.names()[-1] == "committed", fleet.events[-1]
    return updater


LIFECYCLE = ["assigned", "downloaded", "verified", "staged", "health_passed", "activated"]


def test_good_version_goes_through_every_step_and_commits(fleet: Fleet) -> None:
    updater = fleet.updater()
    outcome = updater.handle_assignment(fleet.sign(fleet.push("1.0.0")))
    assert outcome.accepted and outcome.counter == 1
    assert fleet.names() == LIFECYCLE
    assert fleet.serving_version() == "1.0.0"
    assert fleet.update_json()["state"] == "activated"
    health = fleet.events[4]["details"]["health"]
    assert health["agreement"] == 1.0 and health["latency_p95_ms"] < health["latency_budget_ms"]
    assert all(e["device_id"] == DEVICE and e["counter"] == 1 and e["rollout_id"] == "ro-1" for e in fleet.events)
    assert json.loads(fleet.state.assignment_file.read_text())["counter"] == 1

    fleet.traffic(3)
    fleet.clock.t += PROBATION.duration_s
    updater.tick()
    assert fleet.names()[-1] == "activated"  # not enough requests yet: probation goes on
    fleet.traffic(5)
    updater.tick()
    assert fleet.names()[-1] == "committed"
    assert fleet.events[-1]["details"]["probation"]["requests"] == 8
    assert fleet.update_json()["state"] == "committed"
    assert not (fleet.state.downloads_dir / "digits-1.0.0.tar.gz").exists()


def test_upgrade_keeps_serving_and_records_previous(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    updater = fleet.updater()
    updater.handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    assert fleet.serving_version() == "1.1.0"
    assert fleet.events[-1]["details"]["previous_version"] == "1.0.0"


def test_probation_failure_rolls_back_to_the_previous_version(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    updater = fleet.updater(probation=ProbationConfig(duration_s=30, min_requests=5, latency_budget_multiplier=1e-9))
    updater.handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    fleet.traffic(20)  # real latencies, far above a budget scaled to nothing
    updater.tick()
    last = fleet.events[-1]
    assert last["event"] == "rolled_back" and last["reason"] == "probation_failed"
    assert last["details"]["cause"] == "latency"
    assert fleet.serving_version() == "1.0.0"
    assert ModelStore(fleet.state).active("digits").version == "1.0.0"  # type: ignore[union-attr]


def test_crash_loop_in_probation_rolls_back(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    fleet.updater().handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    for _ in range(PROBATION.max_restarts):
        fleet.clock.t += 1
        fleet.restart()
    last = fleet.events[-1]
    assert last["event"] == "rolled_back" and last["details"]["cause"] == "crash_loop"
    assert fleet.serving_version() == "1.0.0"


def test_bad_outputs_in_probation_roll_back_a_first_install_to_nothing(fleet: Fleet) -> None:
    updater = fleet.updater()
    updater.handle_assignment(fleet.sign(fleet.push("1.0.0")))
    session = fleet.serving.get("digits")
    session.bad_outputs = 1  # type: ignore[union-attr]  # what WatchedSession counts on a NaN served
    updater.tick()
    assert fleet.events[-1]["event"] == "rolled_back" and fleet.events[-1]["details"]["cause"] == "bad_outputs"
    assert fleet.serving.get("digits") is None and ModelStore(fleet.state).active("digits") is None


@pytest.mark.parametrize("reason", ["bad_signature", "wrong_device", "replayed_counter", "expired", "malformed"])
def test_refused_assignment_keeps_the_old_model_and_reports_the_reason(fleet: Fleet, reason: str) -> None:
    install(fleet, "1.0.0")
    target = fleet.push("1.1.0", seed=1)
    envelope = {
        "bad_signature": lambda: fleet.sign(target, signer=DirectorSigner.generate()),
        "wrong_device": lambda: fleet.sign(target, device="dev-2"),
        "replayed_counter": lambda: fleet.sign(target, counter=1),
        "expired": lambda: fleet.sign(target, expires_in=60, issued_ago=120),
        "malformed": lambda: b'{"signed": ',
    }[reason]()
    before = fleet.state.assignment_file.read_bytes()
    outcome = fleet.updater().handle_assignment(envelope)
    assert not outcome.accepted and outcome.reason == reason
    assert fleet.events[-1]["event"] == "failed" and fleet.events[-1]["reason"] == reason
    assert fleet.serving_version() == "1.0.0"
    assert fleet.state.assignment_file.read_bytes() == before  # the counter moves only on acceptance
    assert fleet.update_json()["state"] == "committed"


def refused(fleet: Fleet, envelope: bytes, reason: str, updater: Updater | None = None) -> dict[str, Any]:
    (updater or fleet.updater()).handle_assignment(envelope)
    last = fleet.events[-1]
    assert (last["event"], last["reason"]) == ("failed", reason), last
    assert fleet.serving_version() == "1.0.0"
    assert ModelStore(fleet.state).active("digits").version == "1.0.0"  # type: ignore[union-attr]
    return last


def test_assignment_hash_disagreeing_with_tuf_is_refused(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    real = fleet.push("1.1.0", seed=1)
    forged = ModelTarget(real.version, real.target_path, "f" * 64, real.length)
    last = refused(fleet, fleet.sign(forged), "hash_mismatch")
    assert last["details"]["tuf"]["sha256"] == real.sha256


def test_tampered_bundle_on_the_server_is_refused_by_tuf(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    target = fleet.push("1.1.0", seed=1)
    stored = fleet.repo.targets_dir / "digits" / f"{target.sha256}.digits-1.1.0.tar.gz"
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(bytes(data))
    refused(fleet, fleet.sign(target), "hash_mismatch")


def test_bundle_for_another_profile_is_refused(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    last = refused(fleet, fleet.sign(fleet.push("1.1.0", profiles=("rpi4-64",))), "profile_mismatch")
    assert last["details"]["device_profile"] == PROFILE


def test_version_failing_its_golden_samples_never_serves(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    last = refused(fleet, fleet.sign(fleet.push("1.1.0", served_seed=99)), "health_failed")
    assert last["details"]["cause"] == "golden_mismatch"
    assert "activated" not in fleet.names()[-5:]


def test_target_missing_from_tuf_is_refused(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    ghost = ModelTarget("9.9.9", "digits/digits-9.9.9.tar.gz", "e" * 64, 1000)
    refused(fleet, fleet.sign(ghost), "target_unknown")


def test_failed_download_is_retried_later(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    target = fleet.push("1.1.0", seed=1)
    stored = fleet.repo.targets_dir / "digits" / f"{target.sha256}.digits-1.1.0.tar.gz"
    hidden = stored.with_suffix(".hidden")
    stored.rename(hidden)  # the server loses the file: 404
    updater = fleet.updater(retry_after_s=60)
    refused(fleet, fleet.sign(target), "download_failed", updater)
    stored.parent.joinpath(hidden.name).rename(stored)
    fleet.clock.t += 30
    updater.tick()
    assert fleet.names()[-1] == "failed"  # not due yet
    fleet.clock.t += 31
    updater.tick()
    assert fleet.names()[-6:] == LIFECYCLE and fleet.serving_version() == "1.1.0"


def test_reissued_assignment_does_not_disturb_probation(fleet: Fleet) -> None:
    updater = fleet.updater()
    target = fleet.push("1.0.0")
    updater.handle_assignment(fleet.sign(target))
    assert updater.handle_assignment(fleet.sign(target)).accepted
    assert fleet.names() == LIFECYCLE and fleet.update_json()["state"] == "activated"


def test_newer_assignment_supersedes_probation_and_rolls_back_first(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    updater = fleet.updater()
    updater.handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    updater.handle_assignment(fleet.sign(fleet.push("1.2.0", seed=2)))
    names = fleet.names()
    assert "rolled_back" in names[-7:] and fleet.events[-7]["reason"] == "superseded"
    assert names[-6:] == LIFECYCLE and fleet.serving_version() == "1.2.0"


@pytest.mark.parametrize("kill_on", LIFECYCLE)
def test_killed_after_each_step_resumes_and_never_serves_a_partial_model(fleet: Fleet, kill_on: str) -> None:
    install(fleet, "1.0.0")
    fleet.kill_on = kill_on
    with pytest.raises(Killed):
        fleet.updater().handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    assert fleet.update_json()["state"] in {"assigned", "downloading", "verified", "staged", "health_check",
                                            "activated"}
    updater = fleet.restart()
    assert fleet.serving_version() in {"1.0.0", "1.1.0"}
    assert fleet.update_json()["state"] == "activated" and fleet.serving_version() == "1.1.0"
    fleet.traffic()
    fleet.clock.t += PROBATION.duration_s
    updater.tick()
    assert fleet.names()[-1] == "committed" and fleet.events[-1]["version"] == "1.1.0"


def test_killed_mid_download_resumes_with_range(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    target = fleet.push("1.1.0", seed=1)

    def die(_url: str, done: int, _total: int | None) -> None:
        if done >= 1000:
            raise Killed("mid-download")

    fleet.server.requests.clear()
    with pytest.raises(Killed):
        fleet.updater(fetcher=ResumingFetcher(fleet.state.downloads_dir, chunk_size=1000, progress=die)) \
            .handle_assignment(fleet.sign(target))
    assert fleet.update_json()["state"] == "downloading" and fleet.serving_version() == "1.0.0"
    fleet.restart()
    assert any(r == "bytes=1000-" for _, r in fleet.server.requests if "1.1.0" in _)
    assert fleet.update_json()["state"] == "activated" and fleet.serving_version() == "1.1.0"


def test_restart_after_finished_update_returns_to_idle(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    fleet.restart()
    assert fleet.update_json()["state"] == "idle" and fleet.serving_version() == "1.0.0"


def test_probation_totals_survive_a_restart(fleet: Fleet) -> None:
    updater = fleet.updater()
    updater.handle_assignment(fleet.sign(fleet.push("1.0.0")))
    fleet.traffic(3)
    fleet.clock.t += 11
    updater.tick()  # persisted: 3 requests so far
    updater = fleet.restart()
    fleet.traffic(3)  # the new process counts from zero again
    fleet.clock.t += PROBATION.duration_s
    updater.tick()
    assert fleet.names()[-1] == "committed"
    assert fleet.events[-1]["details"]["probation"] == pytest.approx(
        {**fleet.events[-1]["details"]["probation"], "requests": 6, "restarts": 1})


def test_first_install_superseded_in_probation_keeps_serving_while_its_successor_fails(fleet: Fleet) -> None:
    updater = fleet.updater()
    updater.handle_assignment(fleet.sign(fleet.push("1.0.0")))
    updater.handle_assignment(fleet.sign(fleet.push("1.1.0", served_seed=99)))
    superseded = next(e for e in fleet.events if e["reason"] == "superseded")
    assert superseded["event"] == "rolled_back" and superseded["details"]["kept_serving"] is True
    assert fleet.events[-1]["reason"] == "health_failed"
    assert fleet.serving_version() == "1.0.0"  # never without a working model


def test_redelivered_retained_assignment_is_not_a_replay(fleet: Fleet) -> None:
    envelope = fleet.sign(fleet.push("1.0.0"))
    fleet.updater().handle_assignment(envelope)
    count = len(fleet.events)
    outcome = fleet.restart().handle_assignment(envelope)  # the broker re-delivers `desired` on reconnect
    assert outcome.accepted and outcome.duplicate and outcome.counter == 1
    assert len(fleet.events) == count  # no `failed replayed_counter` noise
    tampered = envelope.replace(b'"counter":1', b'"counter":5')
    assert fleet.updater().handle_assignment(tampered).reason == "bad_signature"


def test_failed_bundle_is_tried_again_only_by_a_new_rollout(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    updater = fleet.updater(probation=ProbationConfig(duration_s=30, min_requests=5, latency_budget_multiplier=1e-9))
    target = fleet.push("1.1.0", seed=1)
    updater.handle_assignment(fleet.sign(target))
    fleet.traffic(20)
    updater.tick()
    assert fleet.names()[-1] == "rolled_back"
    count = len(fleet.events)
    updater.handle_assignment(fleet.sign(target))  # the same rollout, re-issued: not again
    assert len(fleet.events) == count
    updater.handle_assignment(fleet.sign(target, rollout="ro-2"))  # an operator's new rollout: try again
    assert fleet.names()[count:] == LIFECYCLE and fleet.events[-1]["rollout_id"] == "ro-2"


def test_attach_wires_updates_to_a_real_broker(fleet: Fleet, mosquitto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's extension hook: `desired` in over a real Mosquitto, `events` out."""
    from types import SimpleNamespace

    from agent.link import Link
    from agent.updater import attach
    from edgefleet import topics
    from tests.integration.agent.harness import Observer, eventually

    monkeypatch.setenv("EDGEFLEET_UPDATE_TICK_S", "0.05")
    identity = fleet.state.load_identity()
    fleet.state.save_identity(Identity(DEVICE, identity.server_url, mosquitto.url, PROFILE, {},
                                       identity.tuf_metadata_url, identity.tuf_targets_url))
    link = Link(DEVICE, mosquitto.url)
    reports: list[int] = []
    daemon = SimpleNamespace(state=fleet.state, store=ModelStore(fleet.state), serving=fleet.serving,
                             profile=load_profile(PROFILE), link=link, publish_reported=lambda: reports.append(1))
    observer = Observer(mosquitto.port, topics.events(DEVICE))
    ticker = attach(daemon)
    assert ticker is not None
    link.start()
    try:
        observer.publish(topics.desired(DEVICE), fleet.sign(fleet.push("1.0.0")), retain=True)
        assert eventually(lambda: [m["event"] for m in observer.messages] == LIFECYCLE, 20), observer.messages
        assert fleet.serving_version() == "1.0.0" and len(reports) >= len(LIFECYCLE)
    finally:
        ticker.close()
        link.stop()
        observer.close()


def test_attach_stays_out_of_a_device_without_a_trust_root(fleet: Fleet) -> None:
    from types import SimpleNamespace

    from agent.updater import attach

    fleet.state.tuf_root_file.unlink()
    assert attach(SimpleNamespace(state=fleet.state, link=object())) is None
    assert attach(SimpleNamespace(state=fleet.state, link=None)) is None
