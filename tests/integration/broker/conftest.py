"""Fixtures of the broker-accounts tests: the edgefleet Mosquitto plugin, compiled once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.broker.plugin import PACKAGES, build
from fleet_server.errors import BrokerError
from simulation.fleet import mosquitto_binary


@pytest.fixture(scope="session")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (scripts/test does this)")
    try:
        return build(tmp_path_factory.mktemp("edgefleet-plugin"))
    except BrokerError as exc:
        pytest.skip(f"the edgefleet Mosquitto plugin cannot be built here ({exc.message.splitlines()[0]}); "
                    f"apt-get install -y {PACKAGES} (scripts/_env.sh require_services does, as root)")
