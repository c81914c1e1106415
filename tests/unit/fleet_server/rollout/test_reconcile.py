"""Reconciling devices from their `reported` documents (issue 19, hole 2), in the pure core.

The threat: an outcome reached while no server listened (the server down, its queue dead with
it) was never learned; the rollout timed the device out and rolled back devices that all ran
the good version. Here the core learns outcomes and the version a device serves from its
report, and never times out or fails a device that serves the rollout's version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from fleet_server.rollouts.machine import (
    Action,
    AssignPrevious,
    AssignVersion,
    Completed,
    DeviceStatus,
    Halt,
    Rollout,
    RolloutDataError,
    RolloutState,
)
from fleet_server.rollouts.reports import DeviceReport, ReportedUpdate, ReportError, parse_reported
from tests.unit.fleet_server.rollout.fleet import (
    MODEL,
    PREVIOUS,
    VERSION,
    at,
    devices,
    make_rollout,
)


def started(count: int = 2, **policy: object) -> tuple[Rollout, list[str]]:
    settings: dict[str, object] = {"waves": (100.0,), "max_failure_rate": 0.0, "min_success_rate": 1.0,
                                   "auto_rollback": True}
    settings.update(policy)
    rollout = make_rollout(devices(count), **settings)
    first = [a.device_id for a in rollout.start(at(0)) if isinstance(a, AssignVersion)]
    for counter, device in enumerate(first, start=5):
        rollout.assignment_issued(device, counter)
    return rollout, first


def report(serves: str | None, state: str = "idle", version: str | None = None, counter: int | None = None,
           reason: str = "") -> DeviceReport:
    update = None if state == "idle" else ReportedUpdate(state, MODEL, version, counter, reason)
    return DeviceReport(True, {MODEL: serves} if serves else {}, update)


def sent_back(actions: Sequence[Action]) -> list[str]:
    return [a.device_id for a in actions if isinstance(a, AssignPrevious)]


def test_a_commit_whose_event_was_lost_is_learned_from_the_report_and_completes_the_rollout() -> None:
    rollout, first = started()
    rollout.device_event(first[0], "committed", at(1), version=VERSION)
    rollout.device_event(first[1], "downloaded", at(1), version=VERSION)
    # first[1] committed while the server was down and restarted: its report keeps the outcome.
    assert rollout.device_reported(first[1], report(VERSION, "committed", VERSION, 6), at(12)) == []
    assert rollout.devices[first[1]].status is DeviceStatus.COMMITTED
    assert rollout.devices[first[1]].serves == VERSION
    assert rollout.tick(at(22)) == [Completed()] and rollout.state is RolloutState.COMPLETED


def test_a_device_serving_the_version_with_nothing_in_flight_has_committed() -> None:
    # An agent already running the assigned bundle installs nothing and sends no event.
    rollout, first = started()
    rollout.device_reported(first[0], report(VERSION), at(1))
    record = rollout.devices[first[0]]
    assert record.status is DeviceStatus.COMMITTED and "serves 2.0.0" in record.reason


def test_a_device_serving_the_version_in_probation_is_never_timed_out_nor_rolled_back() -> None:
    rollout, first = started()
    rollout.device_event(first[0], "committed", at(1), version=VERSION)
    rollout.device_reported(first[1], report(VERSION, "activated", VERSION, 6), at(2))
    rollout.device_offline(first[1], at(3))  # and then it went quiet
    assert rollout.next_deadline() == at(11)  # the bake of the commit, no timeout for first[1]
    for minute in (29, 30, 31, 90, 600):
        assert rollout.tick(at(minute)) == []
    record = rollout.devices[first[1]]
    assert record.status is DeviceStatus.ASSIGNED and rollout.state is RolloutState.RUNNING
    rollout.device_reported(first[1], report(VERSION, "committed", VERSION, 6), at(601))
    assert rollout.tick(at(611)) == [Completed()]


def test_a_timed_out_device_found_serving_the_version_is_in_flight_again() -> None:
    rollout, first = started(count=4, waves=(50.0, 100.0), max_failure_rate=0.5, min_success_rate=0.5)
    rollout.device_event(first[0], "committed", at(1), version=VERSION)
    rollout.tick(at(11))  # wave 1 passes on its one commit; wave 2 starts
    rollout.tick(at(30))
    assert rollout.devices[first[1]].status is DeviceStatus.TIMED_OUT and rollout.state is RolloutState.RUNNING
    rollout.device_reported(first[1], report(VERSION, "activated", VERSION, 6), at(31))
    record = rollout.devices[first[1]]
    assert record.status is DeviceStatus.ASSIGNED and record.finished_at is None
    assert rollout.wave_summaries()[0].failed == 0


def test_reported_failures_count_like_their_events() -> None:
    rollout, first = started()
    actions = rollout.device_reported(first[0], report(PREVIOUS, "rolled_back", VERSION, 5, "probation_failed"),
                                      at(3))
    assert isinstance(actions[0], Halt)
    assert rollout.devices[first[0]].reason.startswith("rolled back on the device: probation_failed")
    assert sorted(sent_back(actions)) == sorted(first)


def test_a_retryable_failure_in_the_report_keeps_the_device_in_flight() -> None:
    rollout, first = started()
    assert rollout.device_reported(first[0], report(PREVIOUS, "failed", VERSION, 5, "download_failed"), at(1)) == []
    assert rollout.devices[first[0]].status is DeviceStatus.ASSIGNED


@pytest.mark.parametrize("stale", [
    report(PREVIOUS, "failed", VERSION, 4, "health_failed"),      # an earlier assignment's outcome
    report(PREVIOUS, "committed", VERSION, 4),                    # ditto, and it no longer serves it
    report(PREVIOUS, "committed", PREVIOUS, 9),                   # another version
    report(PREVIOUS, "downloading", VERSION, 5),                  # in flight
    report(VERSION, "downloading", VERSION, 5),                   # serves it, but an update is in flight
    DeviceReport(True, {MODEL: VERSION, "other": "1.0.0"},
                 ReportedUpdate("staged", MODEL, VERSION, 5)),
])
def test_reports_that_prove_no_outcome_change_nothing(stale: DeviceReport) -> None:
    rollout, first = started()
    rollout.device_reported(first[0], stale, at(1))
    assert rollout.devices[first[0]].status is DeviceStatus.ASSIGNED
    assert rollout.reported_outcome(first[0], stale) is None


def test_another_models_update_does_not_hide_that_the_device_serves_the_version() -> None:
    rollout, first = started()
    other = DeviceReport(True, {MODEL: VERSION}, ReportedUpdate("downloading", "other", "3.0.0", 9))
    rollout.device_reported(first[0], other, at(1))
    assert rollout.devices[first[0]].status is DeviceStatus.COMMITTED


def test_the_last_will_keeps_what_the_device_served() -> None:
    rollout, first = started()
    rollout.device_event(first[1], "committed", at(1), version=VERSION)
    rollout.device_reported(first[0], report(VERSION, "activated", VERSION, 5), at(1))
    rollout.device_reported(first[0], DeviceReport(False), at(2))
    record = rollout.devices[first[0]]
    assert (record.online, record.offline_since, record.serves) == (False, at(2), VERSION)
    assert rollout.tick(at(45)) == []  # it still runs the version: no timeout


def test_replaying_a_report_changes_nothing_the_second_time() -> None:
    rollout, first = started(count=4, waves=(50.0, 100.0))
    committed = report(VERSION, "committed", VERSION, 5)
    rollout.device_reported(first[0], committed, at(1))
    assert not rollout.report_changes(first[0], committed)
    before = rollout.to_dict()
    assert rollout.device_reported(first[0], committed, at(1)) == []
    assert rollout.to_dict() == before


def test_outcomes_and_served_versions_survive_the_stored_document() -> None:
    rollout, first = started()
    rollout.device_event(first[1], "committed", at(1), version=VERSION)
    rollout.device_reported(first[0], report(VERSION, "activated", VERSION, 5), at(1))
    restored = Rollout.from_dict(json.loads(json.dumps(rollout.to_dict())))
    assert restored.devices[first[0]].serves == VERSION and restored.devices[first[0]].counter == 5
    assert restored.tick(at(45)) == rollout.tick(at(45)) == []


def test_a_document_stored_before_serves_and_counter_existed_still_reads() -> None:
    rollout, _ = started()
    document = rollout.to_dict()
    for record in document["devices"]:
        del record["serves"], record["counter"]
    restored = Rollout.from_dict(document)
    assert {r.serves for r in restored.devices.values()} == {None}
    document["devices"][0]["counter"] = "7"
    with pytest.raises(RolloutDataError):
        Rollout.from_dict(document)


# ------------------------------------------------------------------ parsing `reported`


def test_the_agents_report_reads_as_the_contract_says() -> None:
    parsed = parse_reported({"device_id": "d", "online": True, "agent_version": "0.1.0", "profile": "rpi4-64",
                             "models": {MODEL: {"version": VERSION, "sha256": "ab"}},
                             "update": {"state": "committed", "model": MODEL, "version": VERSION, "counter": 3,
                                        "rollout_id": "ro-1", "reason": None}, "ts": 1.0})
    assert parsed == DeviceReport(True, {MODEL: VERSION}, ReportedUpdate("committed", MODEL, VERSION, 3, ""))
    assert parsed.update is not None and parsed.update.finished and not parsed.update.in_flight
    assert parse_reported({"online": True, "models": {}, "update": {"state": "idle"}}) == DeviceReport(True)
    assert parse_reported({"device_id": "d", "online": False}) == DeviceReport(False)


@pytest.mark.parametrize("document", [
    [], {"online": "yes"}, {"online": True, "models": [MODEL]}, {"online": True, "models": {MODEL: "2.0.0"}},
    {"online": True, "models": {MODEL: {"version": 2}}}, {"online": True, "update": "committed"},
    {"online": True, "update": {"state": 1}},
    {"online": True, "update": {"state": "committed", "model": MODEL, "version": VERSION, "counter": "3"}},
    {"online": True, "update": {"state": "committed", "model": MODEL, "version": VERSION, "counter": True}},
    {"online": True, "update": {"state": "failed", "model": 7, "version": VERSION}},
])
def test_a_report_of_the_wrong_shape_is_refused_not_guessed(document: object) -> None:
    with pytest.raises(ReportError):
        parse_reported(document)
