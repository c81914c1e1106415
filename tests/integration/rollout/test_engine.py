"""The rollout engine against a real Mosquitto, light devices and SQLite / PostgreSQL.

Threat model: a bad version must not get past its first wave, a restarted or duplicated
server must not assign anything twice, and a device must never get a bundle that was not
validated for its profile.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from edgefleet import topics
from edgefleet.assignment import DirectorSigner
from fleet_server.rollouts.machine import RolloutPolicy
from simulation.fleet import MosquittoProcess, wait_until
from simulation.lightdevice import Behaviour, DeviceIdentity, LightFleet, Outcome, SimulationError
from tests.integration.rollout.fleetdb import add_device, add_model, counters
from tests.integration.rollout.mqtt_tools import Recorder
from tests.integration.rollout.stack import Replica, build_fleet

DESIRED = "edgefleet/v1/devices/+/desired"


def _url(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> str:
    return f"sqlite:///{tmp_path}/fleet.sqlite" if kind == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def signer() -> DirectorSigner:
    return DirectorSigner.generate()


@pytest.fixture
def fleet(mosquitto: MosquittoProcess) -> Iterator[LightFleet]:
    with LightFleet(mosquitto.url) as light:
        yield light


def _policy(**changes: object) -> RolloutPolicy:
    base: dict[str, object] = {"waves": (10.0, 50.0, 100.0), "bake_time": timedelta(seconds=0.5),
                               "max_failure_rate": 0.05, "min_success_rate": 0.95,
                               "device_timeout": timedelta(seconds=60)}
    base.update(changes)
    return RolloutPolicy(**base)  # type: ignore[arg-type]


def _assigned_versions(recorder: Recorder) -> dict[str, set[str]]:
    """device -> every version any desired message on the broker named for it."""
    seen: dict[str, set[str]] = {}
    for topic, payload, _ in list(recorder.messages):
        if payload:
            models = json.loads(payload)["signed"]["models"]
            seen.setdefault(topics.parse_device_topic(topic)[0], set()).update(m["version"] for m in models.values())
    return seen


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_failing_version_halts_at_first_wave_and_rolls_back(request: pytest.FixtureRequest, tmp_path: Path,
                                                            mosquitto: MosquittoProcess, fleet: LightFleet,
                                                            signer: DirectorSigner, kind: str) -> None:
    replica = Replica(_url(request, tmp_path, kind), mosquitto.url, signer)
    try:
        add_model(replica.db, "digits", "1.0.0")
        add_model(replica.db, "digits", "2.0.0")
        bad = Behaviour(per_version={"digits@2.0.0": Outcome.FAIL_HEALTH})
        ids = build_fleet(replica.db, fleet, signer.public_b64, [f"dev-{i:02d}" for i in range(20)],
                          runs={"digits": "1.0.0"}, behaviour=bad)
        fleet.wait_connected()
        with Recorder(mosquitto.url, DESIRED) as desired:
            view = replica.engine.create("digits", "2.0.0", "site=a", _policy(auto_rollback=True), seed=7)
            final = wait_until(lambda: (v := replica.engine.get(view["id"], devices=True))["state"] == "rolled_back"
                               and v, 15, "the rollout to halt and roll back")
            first_wave = {d["device_id"] for d in final["device_records"] if d["wave"] == 0}
            assert len(first_wave) == 2
            wait_until(lambda: all(fleet.devices[d].last_counter == 2 for d in first_wave), 10,
                       "the rollback assignments to reach the first wave")
            seen = _assigned_versions(desired)
        assert {d for d, versions in seen.items() if "2.0.0" in versions} == first_wave
        assert set(seen) == first_wave  # the rest of the fleet was never sent anything
        assert all(counters(replica.db)[d] == 0 for d in set(ids) - first_wave)
        assert all(fleet.devices[d].models["digits"][0] == "1.0.0" for d in ids)
        assert "halted: wave 1" in " ".join(e["message"] for e in final["log"])
    finally:
        replica.stop()


def test_rollout_survives_an_engine_restart(tmp_path: Path, mosquitto: MosquittoProcess, fleet: LightFleet,
                                            signer: DirectorSigner) -> None:
    url = f"sqlite:///{tmp_path}/fleet.sqlite"
    first = Replica(url, mosquitto.url, signer)
    add_model(first.db, "digits", "1.0.0")
    ids = build_fleet(first.db, fleet, signer.public_b64, [f"dev-{i:02d}" for i in range(20)])
    fleet.wait_connected()
    # a long bake keeps the rollout in wave 1 while the server goes away
    view = first.engine.create("digits", "1.0.0", "", _policy(waves=(10.0, 100.0), bake_time=timedelta(seconds=2)))
    wait_until(lambda: first.engine.get(view["id"])["waves"][0]["committed"] == 2, 10, "wave 1 to commit")
    first.stop()

    second = Replica(url, mosquitto.url, signer)
    try:
        done = wait_until(lambda: (v := second.engine.get(view["id"]))["state"] == "completed" and v, 15,
                          "the restarted engine to finish the rollout")
        assert done["devices"] == {"committed": 20}
        wait_until(lambda: all(fleet.devices[d].models.get("digits", ("",))[0] == "1.0.0" for d in ids), 5,
                   "every device to run 1.0.0")
        assert set(counters(second.db).values()) == {1}  # nobody was assigned twice across the restart
    finally:
        second.stop()


def test_two_replicas_share_one_rollout_without_double_assignment(postgres_url: str, mosquitto: MosquittoProcess,
                                                                  fleet: LightFleet, signer: DirectorSigner) -> None:
    a = Replica(postgres_url, mosquitto.url, signer, interval=0.05)
    b = Replica(postgres_url, mosquitto.url, signer, interval=0.05)
    try:
        add_model(a.db, "digits", "1.0.0")
        ids = build_fleet(a.db, fleet, signer.public_b64, [f"dev-{i:02d}" for i in range(24)])
        fleet.wait_connected()
        view = a.engine.create("digits", "1.0.0", "", _policy(waves=(10.0, 50.0, 100.0),
                                                              bake_time=timedelta(seconds=0.3)))
        done = wait_until(lambda: (v := b.engine.get(view["id"]))["state"] == "completed" and v, 20,
                          "the rollout to complete with both replicas ticking")
        messages = [e["message"] for e in done["log"]]
        assert messages.count("wave 2 started") == 1 and messages.count("wave 3 started") == 1
        assert sum(m.startswith("completed") for m in messages) == 1
        assert set(counters(a.db).values()) == {1}
        wait_until(lambda: all(fleet.devices[d].last_counter == 1 for d in ids), 5, "every device to hold counter 1")
    finally:
        a.stop()
        b.stop()


def test_ineligible_profile_is_never_assigned_and_late_devices_join(tmp_path: Path, mosquitto: MosquittoProcess,
                                                                    fleet: LightFleet, signer: DirectorSigner) -> None:
    replica = Replica(f"sqlite:///{tmp_path}/fleet.sqlite", mosquitto.url, signer)
    try:
        add_model(replica.db, "digits", "1.0.0", profiles=["rpi4-64"])
        pis = build_fleet(replica.db, fleet, signer.public_b64, [f"pi-{i:02d}" for i in range(10)])
        jetsons = build_fleet(replica.db, fleet, signer.public_b64, ["jet-1", "jet-2"], profile="jetson-orin-nano")
        fleet.wait_connected()
        with Recorder(mosquitto.url, DESIRED) as desired:
            view = replica.engine.create("digits", "1.0.0", "site=a",
                                         _policy(waves=(50.0, 100.0), bake_time=timedelta(seconds=1)))
            # enrolls while wave 1 bakes, and matches the selector: it joins
            add_device(replica.db, "pi-late", labels={"site": "a"})
            fleet.add(DeviceIdentity("pi-late", "rpi4-64", signer.public_b64))
            done = wait_until(lambda: (v := replica.engine.get(view["id"], devices=True))["state"] == "completed"
                              and v, 15, "the rollout to complete")
            seen = _assigned_versions(desired)
        records = {d["device_id"]: d for d in done["device_records"]}
        assert {records[j]["status"] for j in jetsons} == {"ineligible"}
        assert not set(jetsons) & set(seen) and counters(replica.db)["jet-1"] == 0
        assert records["pi-late"]["joined_late"] and records["pi-late"]["status"] == "committed"
        assert set(seen) == {*pis, "pi-late"}
        # and the assignment layer refuses it even if asked directly
        from fleet_server.rollouts.assignments import IneligibleError

        with pytest.raises(IneligibleError, match="validated for rpi4-64"):
            replica.assignments.assign("jet-1", {"digits": "1.0.0"}, None, replica.engine.clock())
    finally:
        replica.stop()


def test_a_device_offline_mid_rollout_catches_up_when_it_returns(tmp_path: Path, mosquitto: MosquittoProcess,
                                                                 fleet: LightFleet, signer: DirectorSigner) -> None:
    replica = Replica(f"sqlite:///{tmp_path}/fleet.sqlite", mosquitto.url, signer)
    try:
        add_model(replica.db, "digits", "1.0.0")
        build_fleet(replica.db, fleet, signer.public_b64, [f"dev-{i:02d}" for i in range(7)])
        build_fleet(replica.db, fleet, signer.public_b64, ["dev-flaky"], behaviour=Behaviour(default=Outcome.OFFLINE))
        fleet.wait_connected()
        view = replica.engine.create("digits", "1.0.0", "", _policy(waves=(50.0, 100.0), bake_time=timedelta(0)))

        def flaky() -> dict[str, object]:
            records = replica.engine.get(view["id"], devices=True)["device_records"]
            return next(r for r in records if r["device_id"] == "dev-flaky")

        # its last will reaches the engine: offline, still counted as in flight, the rollout waits
        wait_until(lambda: flaky()["online"] is False, 10, "the engine to see dev-flaky go offline")
        assert flaky()["status"] == "assigned" and replica.engine.get(view["id"])["state"] == "running"
        fleet.reconnect("dev-flaky")
        done = wait_until(lambda: (v := replica.engine.get(view["id"]))["state"] == "completed" and v, 10,
                          "the rollout to complete once dev-flaky is back")
        assert done["devices"] == {"committed": 8}
    finally:
        replica.stop()


def test_rollout_over_a_broker_that_enforces_credentials_and_acl(tmp_path: Path, mosquitto_auth: MosquittoProcess,
                                                                 signer: DirectorSigner) -> None:
    from fleet_server.broker.auth import mosquitto_password_hash, render_acl, render_password_file

    ids = [f"dev-{i:02d}" for i in range(6)]
    passwords = {d: f"pw-{d}" for d in ids} | {"fleet-server": "server-secret"}
    mosquitto_auth.password_file.write_text(render_password_file(
        {user: mosquitto_password_hash(pw, iterations=10) for user, pw in passwords.items()}))
    mosquitto_auth.acl_file.write_text(render_acl([(d, d) for d in ids], ["fleet-server"]))
    mosquitto_auth.reload()
    server_url = f"mqtt://fleet-server:server-secret@127.0.0.1:{mosquitto_auth.port}"
    replica = Replica(f"sqlite:///{tmp_path}/fleet.sqlite", server_url, signer)
    try:
        add_model(replica.db, "digits", "1.0.0")
        with LightFleet(mosquitto_auth.url) as fleet:
            for device_id in ids:
                add_device(replica.db, device_id, labels={"site": "a"})
                fleet.add(DeviceIdentity(device_id, "rpi4-64", signer.public_b64, device_id, passwords[device_id]))
            # a device with a stolen id but not its password never gets on the broker
            impostor = LightFleet(mosquitto_auth.url)
            impostor.add(DeviceIdentity("dev-00", "rpi4-64", signer.public_b64, "dev-00", "guessed"))
            with impostor, pytest.raises(SimulationError, match="did not connect"):
                impostor.wait_connected(2)
            fleet.wait_connected()
            view = replica.engine.create("digits", "1.0.0", "", _policy(waves=(50.0, 100.0), bake_time=timedelta(0)))
            done = wait_until(lambda: (v := replica.engine.get(view["id"]))["state"] == "completed" and v, 15,
                              "the rollout over the authenticated broker")
        assert done["devices"] == {"committed": 6}
    finally:
        replica.stop()
