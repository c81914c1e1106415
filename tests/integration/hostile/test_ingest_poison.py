"""Each poison pill of issue 14, sent by a real enrolled device through a real Mosquitto (auth, ACL)
to a real server on SQLite and PostgreSQL: it is refused, counted for that device and in
/metrics, and never reaches a writer; every good message other devices send around it is stored.

Before the ingest checked messages, one of these made the writer drop its whole write (up to
1,000 messages of any device): 42 of 144 good batches and 137 presence updates were lost in
one run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from edgefleet import topics
from fleet_server.tables import DeviceEventRow, TelemetryBatchRow
from tests.integration.hostile.ingest_fleet import HostileFleet, eventually, fleet_on
from tests.integration.hostile.payloads import event_document, reported_document, wire, wire_batch

pytestmark = pytest.mark.mosquitto


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileFleet]:
    with fleet_on(request.param, request, tmp_path_factory.mktemp(f"poison-{request.param}")) as running:
        yield running


def _batch(device_id: str, **changes: Any) -> bytes:
    document = wire_batch(device_id, seq=int(time.time() * 1000))
    document["t"] = time.time()
    document["m"][0].update({"f": [], **changes.pop("record", {})})
    document.update(changes)
    return wire(json.dumps(document).encode())


def _event(device_id: str, **changes: Any) -> bytes:
    document = {**event_document(device_id, time.monotonic_ns()), "ts": time.time(), **changes}
    return json.dumps(document).encode()


def _reported(device_id: str, **changes: Any) -> bytes:
    return json.dumps({**reported_document(device_id), **changes}).encode()


PILLS: dict[str, tuple[str, str, Callable[[str], bytes]]] = {
    # name: (topic kind, reason, payload for the hostile device)
    "seq of 2**64": ("telemetry", "integer_range", lambda d: _batch(d, s=2**64)),
    "drift bin of 2**64": ("telemetry", "integer_range", lambda d: _batch(d, record={"f": [[2**64]]})),
    "output count of 2**64": ("telemetry", "integer_range", lambda d: _batch(d, record={"o": [2**64, 1]})),
    "count of 2**64": ("telemetry", "integer_range", lambda d: _batch(d, record={"c": 2**64})),
    "NUL in an error kind": ("telemetry", "bad_string", lambda d: _batch(d, record={"e": {"in\x00put": 1}})),
    "drift shape unlike the reference": ("telemetry", "drift_shape", lambda d: _batch(d, record={"f": [[1, 2, 3]]})),
    "NUL in an event name": ("events", "bad_string", lambda d: _event(d, event="stag\x00ed")),
    "NUL in an event's details": ("events", "bad_string", lambda d: _event(d, details={"message": "a\x00b"})),
    "NaN in an event": ("events", "non_finite", lambda d: _event(d, timings={"stage_s": float("nan")})),
    "NaN in reported": ("reported", "non_finite",
                        lambda d: _reported(d, models={"digits": {"version": "1.0.0", "p95": float("nan")}})),
    "reported models as a list": ("reported", "schema", lambda d: _reported(d, models=["digits"])),
    "reported models as a string": ("reported", "schema", lambda d: _reported(d, models="digits")),
}


def _refused_total(fleet: HostileFleet, topic: str, reason: str, family: str = "edgefleet_device_messages_refused") -> float:
    for metric in text_string_to_metric_families(fleet.metrics()):
        if metric.name == family:
            return sum(s.value for s in metric.samples if s.labels == {"topic": topic, "reason": reason})
    return 0.0


def _rows(fleet: HostileFleet, table: Any, device_id: str) -> int:
    with fleet.server.ctx.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(table).where(table.device_id == device_id)) or 0)


@pytest.mark.parametrize("pill", list(PILLS))
def test_a_poison_pill_is_refused_counted_and_costs_no_other_message(fleet: HostileFleet, pill: str) -> None:
    kind, reason, make = PILLS[pill]
    hostile = fleet.hostile
    counted = fleet.refusals(hostile.id).get((kind, reason), 0)
    in_metrics = _refused_total(fleet, kind, reason)
    stored = (_rows(fleet, TelemetryBatchRow, hostile.id), _rows(fleet, DeviceEventRow, hostile.id))
    reported_before = fleet.api(f"/devices/{hostile.id}")["reported"]

    fleet.round()
    for device in fleet.good:
        device.report()
    hostile.publish(topics.device_topic(hostile.id, kind), make(hostile.id), retain=kind == "reported")
    fleet.round()
    for device in fleet.good:
        device.report()

    assert fleet.wait_stored() == {}, "good messages sent around the poison pill were lost"
    assert eventually(lambda: fleet.refusals(hostile.id).get((kind, reason), 0) == counted + 1), \
        fleet.refusals(hostile.id)
    assert _refused_total(fleet, kind, reason) == in_metrics + 1
    # Presence of every good device is up to date; the hostile device's report is what it was.
    expected = {d.id: f"0.1.{d.reports}" for d in fleet.good}
    assert eventually(lambda: fleet.reported_versions() == expected), fleet.reported_versions()
    assert fleet.server.ctx.presence.counts()["dropped"] == 0
    assert fleet.api(f"/devices/{hostile.id}")["reported"] == reported_before
    assert (_rows(fleet, TelemetryBatchRow, hostile.id), _rows(fleet, DeviceEventRow, hostile.id)) == stored
    shown = {(r["topic"], r["reason"]): r for r in fleet.api(f"/devices/{hostile.id}")["refused_messages"]}
    assert shown[(kind, reason)]["detail"].isprintable() and shown[(kind, reason)]["last_at"]


def test_a_batch_from_the_year_2999_is_stored_at_the_servers_time_and_flagged(fleet: HostileFleet) -> None:
    hostile = fleet.hostile
    clamped = fleet.refusals(hostile.id).get(("telemetry", "clock_ahead"), 0)
    seq = int(time.time() * 1000)
    before = datetime.now(UTC)
    hostile.publish(topics.telemetry(hostile.id), _batch(hostile.id, s=seq, t=datetime(2999, 1, 1, tzinfo=UTC).timestamp()))
    fleet.round()
    assert fleet.wait_stored() == {}

    def stored_at() -> datetime | None:
        with fleet.server.ctx.db.session() as session:
            return session.scalar(select(TelemetryBatchRow.ts).where(TelemetryBatchRow.device_id == hostile.id,
                                                                     TelemetryBatchRow.seq == seq))

    assert eventually(lambda: stored_at() is not None)
    at = stored_at()
    assert at is not None and before.replace(microsecond=0) <= at <= datetime.now(UTC)
    assert eventually(lambda: fleet.refusals(hostile.id).get(("telemetry", "clock_ahead"), 0) == clamped + 1)
    assert _refused_total(fleet, "telemetry", "clock_ahead", "edgefleet_device_messages_clamped") >= 1
