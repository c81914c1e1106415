"""What a simulated fleet did, computed from what the server recorded and what devices say (pure).

``fleet_report(rollouts, devices)`` takes the rollout views (``GET /api/v1/rollouts/{id}?devices=true``)
and, per device, what the device itself reports running plus the events it sent; it returns
update latency (assignment to commit, p50/p95/max), failures by reason, and messages lost or
duplicated:

- **lost**: a device whose final outcome the server never learned: the rollout has a result
  for it (committed, failed, rolled back, timed out) that disagrees with what the device runs;
  a device the rollout still counts in flight (``assigned``) is lost if it sent its outcome
  (light devices keep what they sent), else ``unfinished``;
- **duplicated**: an outcome event a device published more than once for one assignment.

It deliberately reads no clock, broker or server: the simulator hands it the data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

OUTCOMES = ("committed", "failed", "rolled_back")


@dataclass(frozen=True)
class DeviceView:
    """One device's own account: what it runs now and the events it published (may be unknown)."""

    device_id: str
    running: Mapping[str, str]                       # model -> version
    events: Sequence[Mapping[str, Any]] | None = None
    faults: tuple[str, ...] = field(default=())


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50_s": None, "p95_s": None, "max_s": None}
    return {"count": len(values), "p50_s": round(percentile(values, 50), 3),
            "p95_s": round(percentile(values, 95), 3), "max_s": round(max(values), 3)}


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def duplicated_outcomes(events: Iterable[Mapping[str, Any]]) -> int:
    """Outcome events sent more than once for the same (model, version, assignment counter)."""
    seen: Counter[tuple[Any, ...]] = Counter()
    for e in events:
        if e.get("event") in OUTCOMES:
            seen[(e.get("event"), e.get("model"), e.get("version"), e.get("counter"))] += 1
    return sum(n - 1 for n in seen.values() if n > 1)


def fleet_report(rollouts: Sequence[Mapping[str, Any]], devices: Mapping[str, DeviceView]) -> dict[str, Any]:
    latencies: list[float] = []
    per_device: dict[str, float] = {}
    reasons: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    lost: list[str] = []
    unfinished: list[str] = []
    for view in rollouts:
        model, version = view["model"], view["version"]
        for record in view.get("device_records", []):
            device_id, status = record["device_id"], record["status"]
            statuses[status] += 1
            if status == "committed":
                took = _seconds_between(record.get("assigned_at"), record.get("finished_at"))
                if took is not None:
                    latencies.append(took)
                    per_device[device_id] = round(took, 3)
            elif status in ("failed", "timed_out", "rolled_back"):
                reasons[str(record.get("reason") or status)] += 1
            device = devices.get(device_id)
            if device is None or status in ("pending", "ineligible"):
                continue
            if status == "assigned":
                # The device says it finished (it sent the outcome) but the server never counted it: lost.
                # Without the device's events (agent processes) it is only unfinished.
                if device.events is not None and any(
                        e.get("event") in OUTCOMES and e.get("model") == model and e.get("version") == version
                        for e in device.events):
                    lost.append(device_id)
                else:
                    unfinished.append(device_id)
                continue
            runs_it = device.running.get(model) == version
            if runs_it != (status == "committed"):
                lost.append(device_id)
    duplicates = sum(duplicated_outcomes(d.events) for d in devices.values() if d.events is not None)
    return {"devices": len(devices), "statuses": dict(statuses), "update_latency": latency_stats(latencies),
            "latency_by_device": per_device, "failures_by_reason": dict(reasons),
            "messages": {"lost": len(lost), "lost_devices": sorted(lost), "duplicated": duplicates},
            "unfinished": sorted(unfinished)}
