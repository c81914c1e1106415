"""One device's update path in one process, for the updater's tests: state dir, director, clock, repository.

``Fleet`` holds the server's side (a repository of targets and the director key) and one
device's state directory; ``Fleet.updater()`` builds a real ``Updater`` on it (real slots,
onnxruntime, serving table). The repository is a seam: ``MemoryRepository`` keeps targets in
memory behind an in-memory ``TufClient`` (unit tests: bytes and signed facts, no HTTP server);
tests/integration/agent/test_updater_tuf.py plugs in the real TUF repository over HTTP.

"Kill" tests raise ``Killed`` (a BaseException) at a chosen point, which is what SIGKILL does
to the code after it, and start a new Updater on the same state directory, as a restarted
agent would.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.probation import ProbationConfig
from agent.runtime import load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import Identity, StateDir
from agent.tuf_client import TargetFacts, TufClient, TufDownloadError, TufMismatchError
from agent.updater import Updater
from edgefleet.assignment import Assignment, DirectorSigner, ModelTarget
from edgefleet.profiles import load_profile
from tests.unit.agent.test_health import onnx_bundle

DEVICE = "dev-1"
PROFILE = "generic-x86_64"
PROBATION = ProbationConfig(duration_s=30, min_requests=5, max_restarts=3)
LIFECYCLE = ["assigned", "downloaded", "verified", "staged", "health_passed", "activated"]


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after the raise point runs, no except clause catches it."""


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


class Repository(Protocol):
    """The server's side of TUF as the tests need it: add a target, hand the device a client."""

    def add(self, path: str, data: bytes) -> TargetFacts: ...
    def client(self) -> TufClient: ...


class MemoryRepository:
    """Targets in memory: the signed facts, and the bytes the server would serve (tamper with ``served``)."""

    def __init__(self) -> None:
        self.facts: dict[str, TargetFacts] = {}
        self.served: dict[str, bytes] = {}
        self.offline = False   # every request fails like a network outage
        self.downloads: list[str] = []

    def add(self, path: str, data: bytes) -> TargetFacts:
        facts = TargetFacts(hashlib.sha256(data).hexdigest(), len(data))
        self.facts[path], self.served[path] = facts, data
        return facts

    def client(self) -> TufClient:
        return _MemoryTuf(self)


class _MemoryTuf:
    """``TufClient`` over a ``MemoryRepository``, keeping the contract: only verified bytes reach ``dest``."""

    def __init__(self, repo: MemoryRepository) -> None:
        self.repo = repo

    def target(self, target_path: str) -> TargetFacts | None:
        if self.repo.offline:
            raise TufDownloadError("download failed: connection refused")
        return self.repo.facts.get(target_path)

    def download(self, target_path: str, dest: Path) -> None:
        if self.repo.offline or target_path not in self.repo.served:
            raise TufDownloadError(f"download failed: {target_path} is not served")
        data, facts = self.repo.served[target_path], self.repo.facts[target_path]
        if hashlib.sha256(data).hexdigest() != facts.sha256 or len(data) != facts.length:
            raise TufMismatchError("downloaded bytes do not match TUF's hash")
        self.repo.downloads.append(target_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


@dataclass
class Fleet:
    """The server side (a repository, the director key) and one device's state dir."""

    state: StateDir
    repo: Repository = field(default_factory=MemoryRepository)
    director: DirectorSigner = field(default_factory=DirectorSigner.generate)
    clock: Clock = field(default_factory=Clock)
    counter: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    kill_on: str | None = None
    serving: ServingTable = field(default_factory=ServingTable)

    @classmethod
    def create(cls, root: Path, repo: Repository | None = None, *, director: DirectorSigner | None = None,
               server_url: str = "http://server.invalid", metadata_url: str = "", targets_url: str = "",
               tuf_root: bytes = b"{}") -> Fleet:
        state = StateDir(root / "state").ensure()
        fleet = cls(state, repo or MemoryRepository(), director or DirectorSigner.generate())
        state.save_identity(Identity(DEVICE, server_url, "", PROFILE, {}, metadata_url, targets_url))
        state.save_director_public_key(fleet.director.public_b64)
        state.save_profile(load_profile(PROFILE).to_toml())
        state.save_tuf_root(tuf_root)
        return fleet

    def push(self, version: str, **kwargs: Any) -> ModelTarget:
        path = f"digits/digits-{version}.tar.gz"
        facts = self.repo.add(path, onnx_bundle(version, **kwargs))
        assert facts.sha256 is not None
        return ModelTarget(version, path, facts.sha256, facts.length)

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
        kwargs.setdefault("tuf", self.repo.client)
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


def install(fleet: Fleet, version: str, **kwargs: Any) -> Updater:
    """Take ``version`` through a whole update to committed."""
    updater = fleet.updater()
    assert updater.handle_assignment(fleet.sign(fleet.push(version, **kwargs))).accepted
    fleet.traffic()
    fleet.clock.t += PROBATION.duration_s
    updater.tick()
    assert fleet.names()[-1] == "committed", fleet.events[-1]
    return updater
