"""How the engine and the light fleet cope with a few hundred devices (scripts/bench, not scripts/test)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from edgefleet.assignment import DirectorSigner
from fleet_server.rollouts.machine import RolloutPolicy
from simulation.fleet import MosquittoProcess, wait_until
from simulation.lightdevice import LightFleet
from tests.integration.rollout.fleetdb import add_model, counters
from tests.integration.rollout.stack import Replica, build_fleet


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_rollout_to_two_hundred_light_devices(request: pytest.FixtureRequest, tmp_path: Path,
                                              mosquitto: MosquittoProcess, kind: str) -> None:
    url = f"sqlite:///{tmp_path}/fleet.sqlite" if kind == "sqlite" else request.getfixturevalue("postgres_url")
    signer = DirectorSigner.generate()
    replica = Replica(url, mosquitto.url, signer)
    try:
        add_model(replica.db, "digits", "1.0.0")
        with LightFleet(mosquitto.url) as fleet:
            t0 = time.monotonic()
            build_fleet(replica.db, fleet, signer.public_b64, [f"dev-{i:03d}" for i in range(200)])
            fleet.wait_connected(60)
            connected = time.monotonic() - t0
            t1 = time.monotonic()
            view = replica.engine.create("digits", "1.0.0", "", RolloutPolicy(
                waves=(1.0, 10.0, 50.0, 100.0), bake_time=timedelta(0), device_timeout=timedelta(minutes=5)))
            wait_until(lambda: replica.engine.get(view["id"])["state"] == "completed", 240, "the rollout")
            took = time.monotonic() - t1
        assert set(counters(replica.db).values()) == {1}
        print(f"\n[{kind}] 200 light devices enrolled+connected in {connected:.1f} s; rollout in 4 waves "
              f"(1,400 device events) completed in {took:.1f} s = {1400 / took:.0f} events/s")
    finally:
        replica.stop()
