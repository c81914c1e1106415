"""Presence ingest: parsed on paho's thread, stored in batches by its own writer (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet import topics
from fleet_server.broker.accounts import UnmanagedBroker
from fleet_server.db import Database
from fleet_server.registry.devices import Devices
from fleet_server.registry.presence import PresenceIngest, PresenceUpdate
from tests.integration.rollout.fleetdb import add_device

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
def devices(database_url: str) -> Iterator[Devices]:
    db = Database(database_url)
    db.migrate()
    for i in range(50):
        add_device(db, f"dev-{i:02d}")
    add_device(db, "dev-revoked", status="revoked")
    yield Devices(db, UnmanagedBroker())
    db.dispose()


class GatedStore:
    """The real ``Devices`` behind a gate: the first batch waits until the test opens it.

    It records each batch's size and the thread that stored it, which is what the ingest
    promises about batching and about staying off the caller's (paho's) thread.
    """

    def __init__(self, devices: Devices) -> None:
        self.devices = devices
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def record_presences(self, updates: Sequence[PresenceUpdate]) -> set[str]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(len(updates))
        self.threads.add(threading.current_thread().name)
        return self.devices.record_presences(updates)


def _reported(device_id: str, online: bool = True, version: str = "1.0.0") -> tuple[str, bytes]:
    doc = {"device_id": device_id, "online": online, "agent_version": f"agent-{version}",
           "models": {"digits": {"version": version}}}
    return topics.reported(device_id), json.dumps(doc).encode()


def test_record_presences_applies_updates_in_order_and_skips_unknown_and_revoked(devices: Devices) -> None:
    later = NOW + timedelta(seconds=5)
    accepted = devices.record_presences([
        PresenceUpdate("dev-00", NOW, True, {"device_id": "dev-00", "online": True, "agent_version": "a1"}),
        PresenceUpdate("dev-00", later, False),
        PresenceUpdate("dev-00", NOW + timedelta(seconds=1), True),  # late duplicate: must not undo offline
        PresenceUpdate("dev-01", NOW, None),
        PresenceUpdate("dev-revoked", NOW, True),
        PresenceUpdate("dev-nobody", NOW, True),
    ])
    assert accepted == {"dev-00", "dev-01"}
    first, second = devices.get("dev-00"), devices.get("dev-01")
    assert (first.online, first.last_seen, first.agent_version) == (False, later, "a1")
    assert first.reported is not None and first.reported["agent_version"] == "a1"
    assert second.last_seen == NOW and second.online is True  # an event proves liveness only
    assert devices.get("dev-revoked").last_seen is None
    assert devices.record_presence(PresenceUpdate("dev-nobody", NOW, True)) is False


def test_a_burst_is_stored_in_batches_on_the_writer_thread(devices: Devices) -> None:
    store = GatedStore(devices)
    ingest = PresenceIngest(store, clock=lambda: NOW, idle_s=0.2)
    ingest(*_reported("dev-00"))  # the writer takes this one and waits at the gate
    assert store.entered.wait(10)
    for i in range(1, 50):
        ingest(*_reported(f"dev-{i:02d}", version="2.0.0"))
    ingest(*_reported("dev-nobody"))
    ingest(topics.reported("dev-01"), b"not json")  # dropped with a warning, never queued
    store.gate.set()
    assert ingest.drain(10)
    # one transaction for the first message, one for everything that queued behind it
    assert store.batches == [1, 50]
    assert store.threads == {"edgefleet-presence"}
    views = {d.id: d for d in devices.list()}
    assert all(views[f"dev-{i:02d}"].online and views[f"dev-{i:02d}"].last_seen == NOW for i in range(50))
    assert views["dev-07"].agent_version == "agent-2.0.0"


def test_writer_stops_when_idle_and_starts_again_with_the_next_message(devices: Devices) -> None:
    ingest = PresenceIngest(devices, clock=lambda: NOW, idle_s=0.05)
    ingest(*_reported("dev-00"))
    assert ingest.drain(10)
    deadline = time.monotonic() + 5
    while any(t.name == "edgefleet-presence" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "edgefleet-presence" for t in threading.enumerate())
    ingest(*_reported("dev-01", online=False))
    assert ingest.drain(10)
    assert devices.get("dev-01").online is False


def test_an_unreachable_database_is_tried_again_and_the_update_acked_only_once_stored(devices: Devices) -> None:
    """Issue 13: an update whose write failed for want of a database is not dropped (nor acked,
    so the broker would deliver it again after a crash): the writer tries again."""
    acked: list[str] = []

    class Flaky:
        calls = 0

        def record_presences(self, updates: Sequence[PresenceUpdate]) -> set[str]:
            self.calls += 1
            if self.calls == 1:
                assert acked == []  # nothing acked before the store
                raise ConnectionError("database went away")
            return devices.record_presences(updates)

    ingest = PresenceIngest(Flaky(), clock=lambda: NOW)
    ingest(*_reported("dev-00"), lambda: acked.append("dev-00"))
    assert ingest.drain(10)
    ingest(*_reported("dev-01"), lambda: acked.append("dev-01"))
    assert ingest.drain(10)
    assert devices.get("dev-00").last_seen == NOW and devices.get("dev-01").last_seen == NOW
    assert acked == ["dev-00", "dev-01"]


def test_an_update_refused_for_what_it_holds_is_dropped_and_acked(devices: Devices) -> None:
    acked: list[str] = []
    ingest = PresenceIngest(devices, clock=lambda: NOW)
    ingest("edgefleet/v1/devices/dev-00/reported", b"not json", lambda: acked.append("bad"))
    assert acked == ["bad"]  # never queued: acked at once, or it would come back at every reconnect


@pytest.mark.parametrize("bad", [{"max_batch": 0}, {"queue_size": 0}, {"idle_s": 0}])
def test_nonsense_settings_are_refused(devices: Devices, bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PresenceIngest(devices, **bad)  # type: ignore[arg-type]
