"""Rows for rollout tests: enrolled devices and published model versions, written straight to the DB.

The enrollment flow and the registry have their own tests; rollout tests need hundreds of
devices and a few versions fast, so they write the rows the way those services do.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fleet_server.db import Database
from fleet_server.tables import DeviceRow, ModelRow

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def add_device(db: Database, device_id: str, profile: str = "rpi4-64", labels: Mapping[str, str] | None = None,
               *, status: str = "enrolled", runs: Mapping[str, str] | None = None) -> None:
    """An enrolled device; ``runs`` (model -> version) goes into its reported document."""
    reported = None
    if runs:
        reported = {"device_id": device_id, "online": True,
                    "models": {m: {"version": v, "sha256": fake_sha(m, v)} for m, v in runs.items()}}
    with db.session() as s:
        s.add(DeviceRow(id=device_id, profile=profile, labels=dict(labels or {}), hostname=device_id,
                        agent_version="test", mqtt_username=device_id, mqtt_password_hash="x",
                        api_token_hash=hashlib.sha256(device_id.encode()).hexdigest(), status=status,
                        online=True, last_seen=None, reported=reported, assignment_counter=0, enrolled_at=T0))


def fake_sha(name: str, version: str) -> str:
    return hashlib.sha256(f"{name}@{version}".encode()).hexdigest()


def reported(device_id: str, serves: str, state: str = "idle", counter: int | None = None,
             reason: str | None = None) -> dict[str, Any]:
    """A report as the agent publishes it (docs/contracts.md)."""
    update_ = {"state": state, "model": None if state == "idle" else "digits",
               "version": None if state == "idle" else "2.0.0", "counter": counter, "rollout_id": "ro-x",
               "reason": reason}
    return {"device_id": device_id, "online": True, "agent_version": "0.1.0", "profile": "rpi4-64",
            "models": {"digits": {"version": serves, "sha256": fake_sha("digits", serves)}}, "update": update_,
            "ts": 1.0}


def add_model(db: Database, name: str, version: str, profiles: Sequence[str] = ("rpi4-64",), *,
              yanked: bool = False, sha256: str | None = None, length: int = 1000) -> None:
    """A published version; the sha256 defaults to a stand-in (light devices fetch nothing)."""
    with db.session() as s:
        s.add(ModelRow(name=name, version=version, sha256=sha256 or fake_sha(name, version), length=length,
                       target_path=f"{name}/{name}-{version}.tar.gz", manifest={}, profiles=list(profiles),
                       yanked=yanked, yanked_at=None, created_at=T0))


def upgrade_fleet(db: Database, device_ids: Sequence[str], model: str = "digits") -> Database:
    """``model`` 1.0.0 and 2.0.0 published and ``device_ids`` serving 1.0.0: ready for a rollout to 2.0.0."""
    add_model(db, model, "1.0.0")
    add_model(db, model, "2.0.0")
    for device_id in device_ids:
        add_device(db, device_id, runs={model: "1.0.0"})
    return db


def counters(db: Database) -> dict[str, int]:
    with db.session() as s:
        return {d.id: d.assignment_counter for d in s.query(DeviceRow).all()}


class RecordingPublisher:
    """An in-memory stand-in for the broker connection (the seam under test is the DB logic)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []
        self.fail_first = fail_first
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        with self._lock:
            if self.fail_first:
                self.fail_first -= 1
                raise ConnectionError("broker down")
            self.sent.append((topic, payload, retain))


class FakeClock:
    """Time for the engine, moved by the test."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
