"""The updater against the real thing: fleet_server's TUF repository over real HTTP, python-tuf's
ngclient with our ResumingFetcher (agent/tuf_client.py), and a real Mosquitto for ``attach``.

The unit tests (tests/unit/agent/test_updater.py) drive the same updater through an in-memory
TUF client; these prove the real client keeps that contract: a tampered file is refused by
TUF's hash, an unknown target is unknown, a cut download resumes with Range, and the daemon's
wiring carries `desired` in and `events` out over a broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.fetcher import ResumingFetcher
from agent.slots import ModelStore
from agent.state import Identity, StateDir
from agent.tuf_client import TargetFacts, TufClient, ngclient_factory
from agent.update_service import attach
from edgefleet import topics
from edgefleet.assignment import ModelTarget
from edgefleet.profiles import load_profile
from fleet_server.trust.keys import KeyStore, init_keys
from fleet_server.trust.tuf_repo import TufRepository
from tests.integration.agent.harness import Observer, eventually
from tests.unit.agent.test_fetcher import RangeServer
from tests.unit.agent.updates import DEVICE, LIFECYCLE, PROBATION, PROFILE, Fleet, Killed, install


class HttpRepository:
    """fleet_server's TUF repository, served over HTTP; the device reaches it with the real ngclient."""

    def __init__(self, repo: TufRepository, state: StateDir) -> None:
        self.repo = repo
        self.state = state

    def add(self, path: str, data: bytes) -> TargetFacts:
        info = self.repo.add_target(path, data)
        return TargetFacts(info.sha256, info.length)

    def client(self) -> TufClient:
        fetcher = ResumingFetcher(self.state.downloads_dir, read_timeout=2, connect_timeout=2)
        return ngclient_factory(self.state, fetcher)()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Fleet, TufRepository, RangeServer]]:
    init_keys(tmp_path / "keys", tmp_path / "root-keys")
    keys = KeyStore.load(tmp_path / "keys")
    repo = TufRepository.create(tmp_path / "repo", keys, tmp_path / "root-keys")
    with RangeServer(root=tmp_path / "repo") as server:
        fleet = Fleet.create(tmp_path, director=keys.director, server_url=server.url,
                             metadata_url=f"{server.url}/metadata/", targets_url=f"{server.url}/targets/",
                             tuf_root=repo.root_json())
        fleet.repo = HttpRepository(repo, fleet.state)
        yield fleet, repo, server


def test_a_good_version_commits_through_real_tuf(served: tuple[Fleet, TufRepository, RangeServer]) -> None:
    fleet, _, server = served
    install(fleet, "1.0.0")
    assert fleet.names() == [*LIFECYCLE, "committed"] and fleet.serving_version() == "1.0.0"
    assert any("/metadata/timestamp.json" in path for path, _ in server.requests)


def test_a_tampered_bundle_on_the_server_is_refused_by_tufs_hash(
        served: tuple[Fleet, TufRepository, RangeServer]) -> None:
    fleet, repo, _ = served
    install(fleet, "1.0.0")
    target = fleet.push("1.1.0", seed=1)
    stored = repo.targets_dir / "digits" / f"{target.sha256}.digits-1.1.0.tar.gz"
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(bytes(data))
    fleet.updater().handle_assignment(fleet.sign(target))
    assert (fleet.events[-1]["event"], fleet.events[-1]["reason"]) == ("failed", "hash_mismatch")
    assert fleet.serving_version() == "1.0.0"


def test_assignment_disagreeing_with_the_signed_targets_and_an_unknown_target_are_refused(
        served: tuple[Fleet, TufRepository, RangeServer]) -> None:
    fleet, _, _ = served
    install(fleet, "1.0.0")
    real = fleet.push("1.1.0", seed=1)
    fleet.updater().handle_assignment(fleet.sign(ModelTarget(real.version, real.target_path, "f" * 64, real.length)))
    assert fleet.events[-1]["reason"] == "hash_mismatch"
    assert fleet.events[-1]["details"]["tuf"]["sha256"] == real.sha256
    ghost = ModelTarget("9.9.9", "digits/digits-9.9.9.tar.gz", "e" * 64, 1000)
    fleet.updater().handle_assignment(fleet.sign(ghost))
    assert fleet.events[-1]["reason"] == "target_unknown" and fleet.serving_version() == "1.0.0"


def test_a_lost_target_file_is_a_retryable_download_failure(
        served: tuple[Fleet, TufRepository, RangeServer]) -> None:
    fleet, repo, _ = served
    install(fleet, "1.0.0")
    target = fleet.push("1.1.0", seed=1)
    stored = repo.targets_dir / "digits" / f"{target.sha256}.digits-1.1.0.tar.gz"
    hidden = stored.with_suffix(".hidden")
    stored.rename(hidden)  # the server loses the file: 404
    updater = fleet.updater(retry_after_s=60)
    updater.handle_assignment(fleet.sign(target))
    assert (fleet.events[-1]["event"], fleet.events[-1]["reason"]) == ("failed", "download_failed")
    hidden.rename(stored)
    fleet.clock.t += 61
    updater.tick()
    assert fleet.names()[-6:] == LIFECYCLE and fleet.serving_version() == "1.1.0"


def test_killed_mid_download_resumes_with_range(served: tuple[Fleet, TufRepository, RangeServer]) -> None:
    fleet, _, server = served
    install(fleet, "1.0.0")
    target = fleet.push("1.1.0", seed=1)

    def die(_url: str, done: int, _total: int | None) -> None:
        if done >= 1000:
            raise Killed("mid-download")

    server.requests.clear()
    dying = ngclient_factory(fleet.state, ResumingFetcher(fleet.state.downloads_dir, chunk_size=1000, progress=die))
    with pytest.raises(Killed):
        fleet.updater(tuf=dying).handle_assignment(fleet.sign(target))
    assert fleet.update_json()["state"] == "downloading" and fleet.serving_version() == "1.0.0"
    fleet.restart()
    assert any(r == "bytes=1000-" for path, r in server.requests if "1.1.0" in path)
    assert fleet.update_json()["state"] == "activated" and fleet.serving_version() == "1.1.0"


def test_attach_wires_updates_to_a_real_broker(served: tuple[Fleet, TufRepository, RangeServer], mosquitto: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's side: `desired` in over a real Mosquitto, `events` out, `reported` after each step."""
    from agent.link import Link

    fleet, _, _ = served
    monkeypatch.setenv("EDGEFLEET_UPDATE_TICK_S", "0.05")
    identity = fleet.state.load_identity()
    fleet.state.save_identity(Identity(DEVICE, identity.server_url, mosquitto.url, PROFILE, {},
                                       identity.tuf_metadata_url, identity.tuf_targets_url))
    link = Link(DEVICE, mosquitto.url)
    reports: list[int] = []
    daemon = SimpleNamespace(state=fleet.state, store=ModelStore(fleet.state), serving=fleet.serving,
                             profile=load_profile(PROFILE), link=link, config=AgentConfig(
                                 probation_s=PROBATION.duration_s, probation_min_requests=PROBATION.min_requests,
                                 probation_max_error_rate=PROBATION.max_error_rate,
                                 probation_max_restarts=PROBATION.max_restarts, update_tick_s=1.0),
                             publish_reported=lambda: reports.append(1))
    observer = Observer(mosquitto.port, topics.events(DEVICE))
    service = attach(daemon)  # type: ignore[arg-type]
    assert service is not None
    link.start()
    try:
        observer.publish(topics.desired(DEVICE), fleet.sign(fleet.push("1.0.0")), retain=True)
        assert eventually(lambda: [m["event"] for m in observer.messages] == LIFECYCLE, 20), observer.messages
        assert fleet.serving_version() == "1.0.0" and len(reports) >= len(LIFECYCLE)
    finally:
        service.close()
        link.stop()
        observer.close()
