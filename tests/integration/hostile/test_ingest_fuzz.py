"""Hostile MQTT payloads, generated per topic by hypothesis, from a real enrolled device into a real
Mosquitto (auth, ACL) and a real server on SQLite and PostgreSQL, while three other devices keep
sending telemetry, events and reports: afterwards every good message sent before and after each
hostile one is stored (counted by key), no presence update was dropped, and the fleet views and
/metrics still answer (issue 14, "Done when").

The examples are bounded (``EXAMPLES`` per database) so the test takes seconds, not minutes;
the pure checks get many more examples in tests/unit/fleet_server/test_validation.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from tests.integration.hostile.ingest_fleet import HostileFleet, eventually, fleet_on
from tests.integration.hostile.payloads import hostile_message

pytestmark = pytest.mark.mosquitto

EXAMPLES = 60


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileFleet]:
    with fleet_on(request.param, request, tmp_path_factory.mktemp(f"fuzz-{request.param}")) as running:
        yield running


def test_no_hostile_message_costs_a_good_one(fleet: HostileFleet) -> None:
    hostile = fleet.hostile
    other = fleet.good[0].id
    sent: list[tuple[str, int]] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(message=hostile_message(hostile.id, other))
    def publish_among_good_traffic(message: tuple[str, bytes]) -> None:
        topic, payload = message
        fleet.round()  # good messages just before ...
        hostile.publish(topic, payload, retain=topic.endswith("/reported"))
        fleet.round()  # ... and just after, likely in the same write as the hostile one
        sent.append((topic.rsplit("/", 1)[1], len(payload)))
        if len(sent) % 10 == 0:
            for device in fleet.good:
                device.report()

    publish_among_good_traffic()
    for device in fleet.good:
        device.report()

    assert fleet.wait_stored() == {}, "good messages were lost"
    assert all(len(d.seqs) == len(d.event_ids) == 2 * len(sent) for d in fleet.good)  # all counted above
    expected = {d.id: f"0.1.{d.reports}" for d in fleet.good}
    assert eventually(lambda: fleet.reported_versions() == expected), fleet.reported_versions()
    assert fleet.server.ctx.presence.counts()["dropped"] == 0
    refused = fleet.refusals(hostile.id)
    assert refused and all(topic in ("telemetry", "events", "reported") for topic, _ in refused)
    # The fleet views and the metrics still answer, for the whole fleet.
    assert {d["id"] for d in fleet.api("/devices")} >= {d.id for d in fleet.good} | {hostile.id}
    assert "edgefleet_device_messages_refused_total" in fleet.metrics()
