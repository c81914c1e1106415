"""The simulator's report: latency percentiles, failures by reason, lost and duplicated outcomes."""

from __future__ import annotations

from typing import Any

from simulation.report import DeviceView, fleet_report, latency_stats, percentile


def record(device: str, status: str, took: float | None = None, reason: str = "") -> dict[str, Any]:
    finished = None if took is None else f"2026-11-25T12:00:{took:06.3f}+00:00"
    return {"device_id": device, "status": status, "reason": reason,
            "assigned_at": "2026-11-25T12:00:00+00:00", "finished_at": finished}


def event(name: str, counter: int) -> dict[str, Any]:
    return {"event": name, "model": "m", "version": "1.0.0", "counter": counter}


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 95) == 95 and percentile(values, 100) == 100
    assert latency_stats([]) == {"count": 0, "p50_s": None, "p95_s": None, "max_s": None}
    assert latency_stats([2.0, 1.0]) == {"count": 2, "p50_s": 1.0, "p95_s": 2.0, "max_s": 2.0}


def test_report_counts_latency_failures_and_lost_outcomes() -> None:
    rollout = {"model": "m", "version": "1.0.0", "device_records": [
        record("a", "committed", 1.5), record("b", "committed", 3.0), record("c", "failed", reason="health_failed"),
        record("d", "timed_out"), record("e", "ineligible")]}
    devices = {
        "a": DeviceView("a", {"m": "1.0.0"}, [event("committed", 1)]),
        "b": DeviceView("b", {"m": "1.0.0"}, [event("committed", 1), event("committed", 1)]),  # sent twice
        "c": DeviceView("c", {"m": "0.9.0"}),
        "d": DeviceView("d", {"m": "1.0.0"}),  # committed, but the server never heard: lost
        "e": DeviceView("e", {}),
    }
    report = fleet_report([rollout], devices)
    assert report["update_latency"] == {"count": 2, "p50_s": 1.5, "p95_s": 3.0, "max_s": 3.0}
    assert report["failures_by_reason"] == {"health_failed": 1, "timed_out": 1}
    assert report["messages"] == {"lost": 1, "lost_devices": ["d"], "duplicated": 1}
    assert report["latency_by_device"] == {"a": 1.5, "b": 3.0}


def test_in_flight_devices_are_lost_only_if_they_sent_their_outcome() -> None:
    rollout = {"model": "m", "version": "1.0.0", "device_records": [record("a", "assigned"), record("b", "assigned"),
                                                                     record("c", "assigned")]}
    devices = {"a": DeviceView("a", {"m": "1.0.0"}, [event("assigned", 1), event("committed", 1)]),
               "b": DeviceView("b", {}, [event("assigned", 1)]),
               "c": DeviceView("c", {"m": "1.0.0"})}  # an agent process: its events are not known
    report = fleet_report([rollout], devices)
    assert report["messages"]["lost_devices"] == ["a"]
    assert report["unfinished"] == ["b", "c"]


def test_a_consistent_fleet_loses_nothing() -> None:
    rollout = {"model": "m", "version": "1.0.0",
               "device_records": [record("a", "committed", 1.0), record("b", "rolled_back", reason="probation_failed")]}
    devices = {"a": DeviceView("a", {"m": "1.0.0"}, [event("committed", 3)]), "b": DeviceView("b", {"m": "0.9.0"})}
    assert fleet_report([rollout], devices)["messages"] == {"lost": 0, "lost_devices": [], "duplicated": 0}
