"""Re-sending `desired` to a device that reports an older assignment (fleet_server.rollouts.resend).

The decision is pure and judged here with an injected clock; the database and the broker are
behind the ``Republisher`` seam, faked in memory (the real one is exercised against Mosquitto
and PostgreSQL in tests/integration/rollout/test_resend.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet import topics
from fleet_server.rollouts.resend import (
    DesiredResender,
    ResendCollector,
    ResendCounts,
    ResendLimit,
    Tokens,
    decide,
    reported_counter,
)

LIMIT = ResendLimit(burst=2, every_s=10.0)


def test_a_device_behind_the_latest_is_sent_it_again() -> None:
    send, tokens = decide(3, 4, None, now=100.0, limit=LIMIT)
    assert send and tokens == Tokens(1.0, 100.0)


@pytest.mark.parametrize(("reported", "latest"), [(4, 4), (5, 4), (0, None), (7, None)])
def test_a_device_at_or_past_the_latest_or_never_assigned_is_sent_nothing_and_spends_nothing(
        reported: int, latest: int | None) -> None:
    assert decide(reported, latest, None, now=0.0, limit=LIMIT) == (False, None)
    empty = Tokens(0.0, 0.0)
    assert decide(reported, latest, empty, now=0.0, limit=LIMIT) == (False, empty)


def test_a_looping_device_gets_its_burst_then_one_resend_per_interval() -> None:
    tokens: Tokens | None = None
    sent = []
    for tenth in range(0, 301):  # a report every 0.1 s for 30 s, always behind
        now = tenth / 10
        send, tokens = decide(1, 2, tokens, now, LIMIT)
        if send:
            sent.append(now)
    assert sent == pytest.approx([0.0, 0.1, 10.0, 20.0, 30.0])  # the burst of 2, then one per 10 s


@given(st.lists(st.tuples(st.floats(0, 30), st.integers(0, 5), st.integers(0, 5) | st.none()), max_size=60),
       st.integers(1, 4), st.floats(0.5, 60))
def test_resends_never_exceed_the_bucket_and_only_go_to_devices_behind(
        reports: list[tuple[float, int, int | None]], burst: int, every_s: float) -> None:
    limit = ResendLimit(burst, every_s)
    now, tokens, sent = 0.0, None, 0
    for gap, reported, latest in reports:
        now += gap
        before = tokens
        send, tokens = decide(reported, latest, tokens, now, limit)
        if send:
            sent += 1
            assert latest is not None and reported < latest
            assert before is None or before.now(now, limit) >= 1.0 - 1e-9
        else:
            assert tokens == before  # a refusal never spends
        # over the whole run: the burst, plus what refilled meanwhile
        assert sent <= burst + now / every_s + 1e-6


@given(st.floats(0, 1e6), st.integers(1, 4), st.floats(0.5, 60))
def test_a_device_behind_is_answered_again_once_an_interval_has_passed(start: float, burst: int, every_s: float) -> None:
    limit = ResendLimit(burst, every_s)
    tokens: Tokens | None = None
    for _ in range(burst):
        send, tokens = decide(0, 1, tokens, start, limit)
        assert send
    assert decide(0, 1, tokens, start, limit)[0] is False
    assert decide(0, 1, tokens, start + every_s, limit)[0] is True


@pytest.mark.parametrize(("document", "counter"), [
    ({"device_id": "d", "online": True, "assignment_counter": 5}, 5),
    ({"device_id": "d", "online": True, "assignment_counter": 0}, 0),
    ({"device_id": "d", "online": True, "models": {}}, None),  # an agent from before the field
    ({"device_id": "d", "online": False}, None),  # the last will says nothing of assignments
    ({"device_id": "d", "online": True, "assignment_counter": True}, None),
    ({"device_id": "d", "online": True, "assignment_counter": -1}, None),
    ({"device_id": "d", "online": True, "assignment_counter": "5"}, None),
    ([], None),
])
def test_the_counter_a_report_names(document: object, counter: int | None) -> None:
    assert reported_counter(document) == counter


class FakeAssignments:
    """The Republisher seam in memory: latest counters, and what was published again."""

    def __init__(self, latest: dict[str, int]) -> None:
        self.latest = latest
        self.reads: list[list[str]] = []
        self.republished: list[list[str]] = []

    def latest_counters(self, device_ids: Sequence[str]) -> dict[str, int]:
        self.reads.append(list(device_ids))
        return {d: self.latest[d] for d in device_ids if d in self.latest}

    def republish(self, device_ids: Sequence[str]) -> list[str]:
        self.republished.append(list(device_ids))
        return []


def _report(device_id: str, counter: int | None, *, online: bool = True) -> tuple[str, bytes]:
    document: dict[str, object] = {"device_id": device_id, "online": online}
    if counter is not None:
        document["assignment_counter"] = counter
    return topics.reported(device_id), json.dumps(document).encode()


def test_the_resender_answers_a_batch_with_one_read_and_one_publish() -> None:
    store = FakeAssignments({"dev-a": 3, "dev-b": 3, "dev-c": 1})
    clock = [0.0]
    resender = DesiredResender(store, monotonic=lambda: clock[0])
    assert resender.handle([("dev-a", 2), ("dev-b", 3), ("dev-c", 0), ("dev-new", 0), ("dev-a", 1)]) == [
        "dev-a", "dev-c"]
    assert store.reads == [["dev-a", "dev-b", "dev-c", "dev-new"]] and store.republished == [["dev-a", "dev-c"]]
    assert resender.counts().resent == 2


def test_a_device_out_of_tokens_costs_no_database_read() -> None:
    store = FakeAssignments({"dev-a": 3})
    resender = DesiredResender(store, limit=ResendLimit(burst=1, every_s=60), monotonic=lambda: 5.0)
    assert resender.handle([("dev-a", 2)]) == ["dev-a"]
    assert resender.handle([("dev-a", 2)]) == []
    assert store.reads == [["dev-a"]] and resender.counts().limited == 1


def test_submit_queues_only_reports_that_name_a_counter() -> None:
    store = FakeAssignments({"dev-a": 3})
    resender = DesiredResender(store, monotonic=lambda: 0.0)
    for topic, payload in [_report("dev-a", None), _report("dev-a", 1, online=False),
                           (topics.events("dev-a"), b"{}"), (topics.reported("dev-a"), b"not json"),
                           (topics.reported("dev-a"), b""), ("not/a/device/topic", b"{}"), _report("dev-a", 2)]:
        resender.submit(topic, payload)
    assert resender._queue.get_nowait() == ("dev-a", 2) and resender._queue.empty()


def test_a_full_queue_drops_rather_than_blocks_the_broker_thread() -> None:
    resender = DesiredResender(FakeAssignments({}), queue_size=1)
    resender.submit(*_report("dev-a", 1))
    resender.submit(*_report("dev-b", 1))
    assert resender.counts().dropped == 1


def test_metrics_count_this_replicas_resends() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(ResendCollector(lambda: ResendCounts(reports=9, resent=2, limited=3, dropped=1, failed=1)))
    text = generate_latest(registry).decode()
    for line in ("edgefleet_desired_resent_total 2.0", "edgefleet_desired_resend_limited_total 3.0",
                 "edgefleet_desired_resend_failed_total 2.0"):
        assert line in text
    silent = CollectorRegistry()
    silent.register(ResendCollector(lambda: None))  # no MQTT on this replica
    assert b"edgefleet_desired" not in generate_latest(silent)
