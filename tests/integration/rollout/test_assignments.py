"""Signed assignments: database counters, eligibility, publishing order and refresh (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from edgefleet import topics
from edgefleet.assignment import DirectorSigner, verify_assignment
from fleet_server.db import Database
from fleet_server.errors import BrokerError
from fleet_server.rollouts.assignments import Assignments, IneligibleError
from tests.integration.rollout.fleetdb import (
    T0,
    RecordingPublisher,
    add_device,
    add_model,
    counters,
)


@pytest.fixture
def db(migrated_db: Database) -> Iterator[Database]:
    database = migrated_db
    add_device(database, "dev-1")
    add_device(database, "dev-jetson", profile="jetson-orin-nano")
    add_device(database, "dev-revoked", status="revoked")
    add_model(database, "digits", "1.0.0")
    add_model(database, "digits", "2.0.0")
    add_model(database, "digits", "3.0.0", yanked=True)
    add_model(database, "kws", "0.1.0", profiles=["rpi4-64", "jetson-orin-nano"])
    yield database


def _verify(signer: DirectorSigner, envelope: bytes, device: str = "dev-1", last: int = 0) -> dict[str, str]:
    doc = verify_assignment(envelope, director_public_b64=signer.public_b64, device_id=device, last_counter=last,
                            now=T0 + timedelta(minutes=1))
    return {n: t.version for n, t in doc.models.items()}


def test_counter_grows_in_the_database_and_envelope_verifies(db: Database) -> None:
    signer, pub = DirectorSigner.generate(), RecordingPublisher()
    service = Assignments(db, signer, pub)
    first = service.assign("dev-1", {"digits": "1.0.0"}, "ro-a", T0)
    second = service.assign("dev-1", {"kws": "0.1.0"}, None, T0)
    assert (first.counter, second.counter) == (1, 2)
    assert counters(db)["dev-1"] == 2
    # the desired map is per device: adding kws keeps digits
    assert _verify(signer, second.envelope, last=1) == {"digits": "1.0.0", "kws": "0.1.0"}
    third = service.assign("dev-1", {"kws": None}, None, T0)
    assert _verify(signer, third.envelope, last=2) == {"digits": "1.0.0"}
    assert pub.sent[-1] == (topics.desired("dev-1"), third.envelope, True)
    assert service.latest_envelope("dev-1") == third.envelope


@pytest.mark.parametrize(("device", "models", "reason"), [
    ("dev-jetson", {"digits": "1.0.0"}, "profile_not_validated"),
    ("dev-1", {"digits": "3.0.0"}, "yanked"),
    ("dev-1", {"digits": "9.9.9"}, "unknown_version"),
    ("dev-revoked", {"digits": "1.0.0"}, "device_revoked"),
])
def test_ineligible_assignment_is_refused_and_leaves_no_trace(db: Database, device: str, models: dict[str, str],
                                                              reason: str) -> None:
    pub = RecordingPublisher()
    service = Assignments(db, DirectorSigner.generate(), pub)
    with pytest.raises(IneligibleError) as caught:
        service.assign(device, models, "ro-x", T0)
    assert caught.value.reason == reason
    assert counters(db)[device] == 0
    assert pub.sent == [] and service.latest_envelope(device) is None


def test_two_replicas_never_issue_the_same_counter(db: Database) -> None:
    signer = DirectorSigner.generate()
    replicas = [Assignments(Database(db.url), signer, RecordingPublisher()) for _ in range(2)]
    issued: list[int] = []
    lock = threading.Lock()

    def work(service: Assignments, version: str) -> None:
        for _ in range(15):
            counter = service.assign("dev-1", {"digits": version}, None, T0).counter
            with lock:
                issued.append(counter)

    threads = [threading.Thread(target=work, args=(r, v)) for r, v in zip(replicas, ("1.0.0", "2.0.0"), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in replicas:
        r.db.dispose()
    assert sorted(issued) == list(range(1, 31))
    assert counters(db)["dev-1"] == 30


def test_publish_of_an_older_counter_is_followed_by_the_latest(db: Database) -> None:
    pub = RecordingPublisher()
    service = Assignments(db, DirectorSigner.generate(), pub)
    with db.session() as s:
        older = service.next_assignment(s, "dev-1", {"digits": "1.0.0"}, None, T0)
    with db.session() as s:
        newer = service.next_assignment(s, "dev-1", {"digits": "2.0.0"}, None, T0)
    # replica B published 6 first, then replica A's 5 arrives late
    service.publish(newer)
    service.publish(older)
    assert pub.sent[-1][1] == newer.envelope  # the broker ends up retaining the latest


def test_maintain_republishes_after_a_broker_outage_and_refreshes_at_half_life(db: Database) -> None:
    signer = DirectorSigner.generate()
    pub = RecordingPublisher(fail_first=1)
    service = Assignments(db, signer, pub, ttl=timedelta(hours=2))
    with db.session() as s:
        issued = service.next_assignment(s, "dev-1", {"digits": "1.0.0"}, "ro-a", T0)
    with pytest.raises(BrokerError):
        service.publish(issued)
    assert service.maintain(T0 + timedelta(minutes=5)) == (1, 0)
    assert pub.sent[-1][1] == issued.envelope
    assert service.maintain(T0 + timedelta(minutes=59)) == (0, 0)
    assert service.maintain(T0 + timedelta(minutes=61)) == (0, 1)
    refreshed = service.latest_envelope("dev-1")
    assert refreshed is not None and pub.sent[-1][1] == refreshed
    assert _verify(signer, refreshed, last=1) == {"digits": "1.0.0"}
    assert counters(db)["dev-1"] == 2


def test_refresh_skips_a_device_whose_version_was_yanked(db: Database) -> None:
    from sqlalchemy import update

    from fleet_server.tables import ModelRow

    service = Assignments(db, DirectorSigner.generate(), RecordingPublisher(), ttl=timedelta(hours=2))
    service.assign("dev-1", {"digits": "1.0.0"}, None, T0)
    with db.session() as s:
        s.execute(update(ModelRow).where(ModelRow.version == "1.0.0").values(yanked=True))
    assert service.maintain(T0 + timedelta(hours=1, minutes=1)) == (0, 0)
    assert counters(db)["dev-1"] == 1


def test_a_batch_issues_the_eligible_and_refuses_the_rest_without_a_trace(db: Database) -> None:
    from fleet_server.errors import NotFoundError

    signer = DirectorSigner.generate()
    service = Assignments(db, signer, RecordingPublisher())
    service.assign("dev-1", {"kws": "0.1.0"}, None, T0)
    with db.session() as s:
        issued, refused = service.next_assignments(s, {
            "dev-1": {"digits": "1.0.0"}, "dev-jetson": {"digits": "1.0.0"}, "dev-revoked": {"digits": "1.0.0"},
            "dev-nobody": {"digits": "1.0.0"}}, "ro-b", T0)
    assert [(i.device_id, i.counter) for i in issued] == [("dev-1", 2)]
    assert _verify(signer, issued[0].envelope, last=1) == {"digits": "1.0.0", "kws": "0.1.0"}  # map kept
    assert {d: getattr(e, "reason", type(e).__name__) for d, e in refused.items()} == {
        "dev-jetson": "profile_not_validated", "dev-revoked": "device_revoked", "dev-nobody": "NotFoundError"}
    assert isinstance(refused["dev-nobody"], NotFoundError)
    assert counters(db) == {"dev-1": 2, "dev-jetson": 0, "dev-revoked": 0}
    assert service.latest_envelope("dev-1") == issued[0].envelope and service.latest_envelope("dev-jetson") is None
