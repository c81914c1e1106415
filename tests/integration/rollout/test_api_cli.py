"""``edgefleet rollouts ...`` against the real server app under uvicorn, with a real broker and light devices."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet import topics
from edgefleet.assignment import verify_assignment
from edgefleet.cli import main
from fleet_server.app import create_app
from fleet_server.config import ServerConfig
from simulation.fleet import MosquittoProcess, free_port
from simulation.lightdevice import LightFleet, TufTargetChecker
from tests.integration.rollout.fleetdb import add_device, add_model
from tests.integration.rollout.mqtt_tools import Recorder
from tests.integration.rollout.stack import build_fleet

TOKEN = "admin-token-for-tests"


@dataclass
class Server:
    url: str
    ctx: Any  # fleet_server.context.ServerContext: its db, keys, TUF repo and rollout engine

    @property
    def db(self) -> Any:
        return self.ctx.db

    @property
    def director_b64(self) -> str:
        return str(self.ctx.keys.director.public_b64)


@pytest.fixture
def server(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[Server]:
    """The real app (create_app) under uvicorn: its MQTT connection runs the rollout engine's worker."""
    import uvicorn

    port = free_port()
    config = ServerConfig(data_dir=tmp_path / "server", port=port, admin_token=TOKEN, broker_url=mosquitto.url,
                          rollout_interval_seconds=0.2)
    app = create_app(config)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        threading.Event().wait(0.05)
    try:
        assert app.state.ctx.rollouts is not None, "the app did not start its rollout engine"
        yield Server(f"http://127.0.0.1:{port}", app.state.ctx)
    finally:
        uv.should_exit = True
        thread.join(10)


def _cli(capsys: pytest.CaptureFixture[str], server: Server, *args: str) -> tuple[int, str]:
    code = main(["rollouts", *args, "--server", server.url, "--token", TOKEN])
    return code, capsys.readouterr().out


def test_cli_rolls_a_version_out_in_waves(server: Server, mosquitto: MosquittoProcess,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    db = server.db
    add_model(db, "digits", "1.0.0")
    with LightFleet(mosquitto.url) as fleet:
        build_fleet(db, fleet, server.director_b64, [f"dev-{i:02d}" for i in range(20)])
        fleet.wait_connected()
        code, out = _cli(capsys, server, "create", "digits@1.0.0", "--selector", "site=a", "--waves", "10,50,100",
                         "--bake", "1", "--seed", "42", "--json")
        assert code == 0
        created = json.loads(out.strip().splitlines()[-1])
        assert created["state"] == "running" and created["assigned"] == 2 and created["seed"] == 42
        code, out = _cli(capsys, server, "status", created["id"], "--watch", "--interval", "0.2", "--json")
        assert code == 0, out
        final = json.loads(out.strip().splitlines()[-1])
        assert final["state"] == "completed" and final["devices"] == {"committed": 20}
        assert [w["committed"] for w in final["waves"]] == [w["size"] for w in final["waves"]]

        code, out = _cli(capsys, server, "status", created["id"])
        assert code == 0 and "completed" in out and "wave 3 started" in out
        code, out = _cli(capsys, server, "list")
        assert code == 0 and created["id"] in out and "digits@1.0.0" in out

    # every device's signed assignment sits retained on the broker for when it reconnects
    with Recorder(mosquitto.url, "edgefleet/v1/devices/+/desired") as rec:
        rec.wait_for(lambda: len(rec.messages) == 20)
        for topic, payload, retained in rec.messages:
            device_id = topics.parse_device_topic(topic)[0]
            doc = verify_assignment(payload, director_public_b64=server.director_b64, device_id=device_id,
                                    last_counter=0, now=datetime.now(UTC))
            assert retained and doc.rollout_id == created["id"] and doc.models["digits"].version == "1.0.0"


def test_api_commands_and_refusals(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    db = server.db
    add_model(db, "digits", "1.0.0")
    add_model(db, "digits", "0.9.0", yanked=True)
    for i in range(4):
        add_device(db, f"dev-{i}")
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert httpx.get(f"{server.url}/api/v1/rollouts").status_code == 401
    assert api.get("/api/v1/rollouts/ro-0000").status_code == 404
    bad = api.post("/api/v1/rollouts", json={"model": "digits", "version": "1.0.0", "waves": [10, 50]})
    assert bad.status_code == 422 and "100" in bad.text
    assert api.post("/api/v1/rollouts", json={"model": "digits", "version": "0.9.0"}).status_code == 409
    assert api.post("/api/v1/rollouts", json={"model": "digits", "version": "1.0.0",
                                              "selector": "site=nowhere"}).status_code == 422

    # devices never answer here (no light fleet): the rollout stays in wave 1
    code, out = _cli(capsys, server, "create", "digits@1.0.0", "--waves", "50,100", "--json")
    rollout_id = json.loads(out)["id"]
    again = api.post("/api/v1/rollouts", json={"model": "digits", "version": "1.0.0"})
    assert again.status_code == 409 and "still live" in again.json()["detail"]
    assert _cli(capsys, server, "pause", rollout_id)[1].strip() == f"rollout {rollout_id} is now paused"
    code = main(["rollouts", "pause", rollout_id, "--server", server.url, "--token", TOKEN])
    assert code == 1 and "cannot pause" in capsys.readouterr().err  # a second pause is refused (409)
    assert json.loads(_cli(capsys, server, "resume", rollout_id, "--json")[1])["state"] == "running"
    assert json.loads(_cli(capsys, server, "abort", rollout_id, "--json")[1])["state"] == "aborted"
    rolled = json.loads(_cli(capsys, server, "rollback", rollout_id, "--json")[1])
    # the touched devices ran nothing before, so there is nothing to roll back to: an alert, not a guess
    assert rolled["state"] == "rolled_back" and "no_previous_version" in json.dumps(rolled["log"])
    listed = json.loads(_cli(capsys, server, "list", "--state", "rolled_back", "--json")[1])
    assert [v["id"] for v in listed] == [rollout_id]


def test_light_devices_refuse_a_target_whose_hash_disagrees_with_tuf(server: Server, mosquitto: MosquittoProcess,
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    db, repo = server.db, server.ctx.repo
    good = repo.add_target("digits/digits-1.0.0.tar.gz", b"the 1.0.0 bundle")
    repo.add_target("digits/digits-2.0.0.tar.gz", b"the 2.0.0 bundle")
    add_model(db, "digits", "1.0.0", sha256=good.sha256, length=good.length)
    # the registry row disagrees with the signed TUF metadata (a tampered database)
    add_model(db, "digits", "2.0.0", sha256="0" * 64, length=16)
    checker = TufTargetChecker(repo.root_json(), f"{server.url}/tuf/metadata/", tmp_path / "tuf-client")
    with LightFleet(mosquitto.url, checker=checker) as fleet:
        build_fleet(db, fleet, server.director_b64, [f"dev-{i:02d}" for i in range(6)])
        fleet.wait_connected()
        code = main(["rollouts", "status", "latest", "--server", server.url, "--token", TOKEN])
        assert code == 1 and "there is no rollout yet" in capsys.readouterr().err
        # create --watch: started and watched in one command, no id to copy (docs/walkthrough.md)
        code, out = _cli(capsys, server, "create", "digits@1.0.0", "--waves", "50,100", "--bake", "0", "--watch",
                         "--interval", "0.2")
        assert code == 0 and "completed" in out and "committed 6" in out
        second = json.loads(_cli(capsys, server, "create", "digits@2.0.0", "--waves", "50,100", "--bake", "0",
                                 "--auto-rollback", "--json")[1])
        code, out = _cli(capsys, server, "status", "latest", "--watch", "--interval", "0.2", "--devices")
        assert code == 1 and second["id"] in out and "rolled_back" in out and "tuf_hash_mismatch" in out
        assert all(d.models["digits"][0] == "1.0.0" for d in fleet.devices.values())


def test_a_staged_rollout_through_the_cli_and_the_api(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    db = server.db
    add_model(db, "digits", "1.0.0")
    add_model(db, "digits", "2.0.0")
    for i in range(4):
        add_device(db, f"dev-{i}", runs={"digits": "1.0.0"})
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"})
    both = api.post("/api/v1/rollouts", json={"model": "digits", "version": "2.0.0", "shadow": {"seconds": 60},
                                              "canary": {"share": 0.1}})
    assert both.status_code == 422 and "pick one" in both.text
    assert api.post("/api/v1/rollouts", json={"model": "digits", "version": "2.0.0",
                                              "shadow": {"seconds": 60, "min_agreement": 1.5}}).status_code == 422
    # flags of one stage without it, and both stages, are refused before the server is asked
    for flags, says in ((["--min-agreement", "0.9"], "only apply with --shadow"),
                        (["--shadow", "1m", "--canary", "10%"], "cannot be combined"),
                        (["--canary", "100%"], "answer every request")):
        code = main(["rollouts", "create", "digits@2.0.0", *flags, "--server", server.url, "--token", TOKEN])
        assert code != 0 and says in capsys.readouterr().err

    code, out = _cli(capsys, server, "create", "digits@2.0.0", "--waves", "50,100", "--shadow", "30m",
                     "--min-agreement", "0.95", "--shadow-sample", "50%", "--min-shadow-requests", "1,000", "--json")
    created = json.loads(out)
    assert code == 0 and created["policy"]["stage"] == {
        "mode": "shadow", "duration_s": 1800.0, "min_agreement": 0.95, "max_latency_ratio": 1.5, "sample": 0.5,
        "min_requests": 1000}
    assert created["waves"][0]["stage"]["sent"] == 2 and created["waves"][0]["candidate"] == 2
    code, out = _cli(capsys, server, "status", created["id"])
    assert "shadow 1800s per wave at sample 0.5" in out and "starting: 0/2 ready" in out
    aborted = json.loads(_cli(capsys, server, "abort", created["id"], "--json")[1])
    assert aborted["devices"] == {"pending": 2, "withdrawn": 2}
    assert "candidate withdrawn from 2 device(s)" in json.dumps(aborted["log"])
