"""Confidential models: a server with ``private_targets`` serves bundles to enrolled devices only.

Real processes (``edgefleet server`` with EDGEFLEET_PRIVATE_TARGETS=true, Mosquitto, ``edgefleet
agent run``): an anonymous download, a made-up token and a revoked device's token are refused
before any byte of the model leaves; TUF metadata stays public; an enrolled agent still updates
end to end, its TUF fetcher sending its API token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from simulation.fleet import mosquitto_binary
from tests.integration.update_path.conftest import MODEL, Bundles
from tests.integration.update_path.test_rollouts import FAST_ROLLOUT
from tests.support.fleet import Fleet


@pytest.fixture
def private_fleet(tmp_path: Path) -> Iterator[Fleet]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (scripts/test does this)")
    running = Fleet(tmp_path)
    running.server.env["EDGEFLEET_PRIVATE_TARGETS"] = "true"
    with running:
        yield running


def _api_token(state_dir: Path) -> str:
    return str(json.loads((state_dir / "credentials.json").read_text())["api_token"])


def test_private_targets_refuse_anonymous_and_revoked_downloads_and_an_enrolled_agent_updates(
        private_fleet: Fleet, bundles: Bundles) -> None:
    fleet = private_fleet
    agent = fleet.enroll("pi-0", labels={"site": "lab"}).start()
    stolen = fleet.enroll("pi-stolen", labels={"site": "elsewhere"})  # enrolled, then revoked
    pushed = fleet.server.push(bundles.v1)
    target = fleet.server.target_file(pushed)
    url = f"{fleet.server.url}/tuf/targets/{target.relative_to(fleet.server.data_dir / 'tuf' / 'targets')}"

    anonymous = httpx.get(url, timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == "application/problem+json"
    assert "API token" in anonymous.json()["detail"] and anonymous.json()["fix"]
    assert httpx.get(url, headers={"Authorization": "Bearer made-up"}, timeout=10).status_code == 401
    # TUF metadata stays public: it names hashes and lengths, not the model.
    assert httpx.get(f"{fleet.server.url}/tuf/metadata/timestamp.json", timeout=10).status_code == 200

    stolen_token = {"Authorization": f"Bearer {_api_token(stolen.state_dir)}"}
    before = httpx.get(url, headers={**stolen_token, "Range": "bytes=0-99"}, timeout=10)
    assert before.status_code == 206 and before.content == target.read_bytes()[:100]  # while enrolled
    assert fleet.server.api("POST", f"/devices/{stolen.device_id}/revoke").status_code == 200
    revoked = httpx.get(url, headers=stolen_token, timeout=10)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    assert target.read_bytes()[:64] not in anonymous.content + revoked.content  # no byte of the model left

    fleet.wait_online([agent])
    created = fleet.server.create_rollout(f"{MODEL}@1.0.0", "--selector", "site=lab", "--waves", "100",
                                          *FAST_ROLLOUT)
    done = fleet.server.wait_rollout(created["id"], {"completed", "halted", "rolled_back"}, 60)
    assert done["state"] == "completed", done["log"]
    assert agent.active_version(MODEL) == "1.0.0" and agent.update()["state"] == "committed"
    assert agent.predict(MODEL, bundles.rows).status_code == 200
