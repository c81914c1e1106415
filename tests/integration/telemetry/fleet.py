"""Helpers for the telemetry tests: devices in the database, batches shaped like the agent's.

``add_device`` writes an enrolled device row directly (enrollment itself is tested elsewhere);
``reference_counts`` and ``shifted_counts`` give per-feature bin counts that follow a bundle's
reference profile or pile everything into each feature's last bin (a drifted input).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from edgefleet.telemetry import Feedback, Latency, ModelRecord, TelemetryBatch
from fleet_server.db import Database
from fleet_server.tables import DeviceRow

_ids = itertools.count(1)


def add_device(db: Database, device_id: str, *, profile: str = "generic-x86_64",
               labels: Mapping[str, str] | None = None, online: bool = True,
               models: Mapping[str, str] | None = None) -> str:
    n = next(_ids)
    reported: dict[str, Any] = {"device_id": device_id, "online": online,
                                "models": {k: {"version": v} for k, v in (models or {}).items()}}
    with db.session() as session:
        session.add(DeviceRow(id=device_id, profile=profile, labels=dict(labels or {}), hostname="", agent_version="",
                              mqtt_username=f"{device_id}-{n}", mqtt_password_hash="x", api_token_hash=f"h{n}-{device_id}",
                              status="enrolled", online=online, last_seen=datetime.now(UTC), reported=reported,
                              assignment_counter=0, enrolled_at=datetime.now(UTC)))
    return device_id


def reference_counts(reference: Mapping[str, Any], scale: int = 1) -> list[list[int]]:
    return [[int(c) * scale for c in f["counts"]] for f in reference["features"]]


def shifted_counts(reference: Mapping[str, Any], rows: int = 500) -> list[list[int]]:
    return [[0] * (len(f["counts"]) - 1) + [rows] for f in reference["features"]]


def record(model: str = "digits", version: str = "1.0.0", *, count: int = 100, drift: Sequence[Sequence[int]] = (),
           errors: Mapping[str, int] | None = None, p95: float = 1.5, feedback: tuple[int, int] = (0, 0),
           outputs: Sequence[int] = ()) -> ModelRecord:
    return ModelRecord(model=model, version=version, count=count, errors=dict(errors or {}),
                       latency=Latency(0.5, p95, p95 * 2), outputs=tuple(outputs),
                       drift=tuple(tuple(f) for f in drift), feedback=Feedback(*feedback))


def batch(device_id: str, seq: int, ts: float, *records: ModelRecord, dropped: int = 0) -> TelemetryBatch:
    return TelemetryBatch(device_id=device_id, seq=seq, ts=ts, interval_s=60, dropped=dropped, models=tuple(records))
