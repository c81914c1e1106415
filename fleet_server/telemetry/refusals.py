"""Refused device messages, counted: per reason in this replica (``/metrics``), per device in the database.

A message refused by ``fleet_server.telemetry.validation`` (or dropped alone by the writer when
the database refused it) is a ``Fault``. Two places count it, on purpose apart:

* ``FaultCounter`` counts per (topic, reason) in memory, for ``/metrics``
  (``edgefleet_device_messages_refused_total{topic,reason}`` and ``..._clamped_total``). Both
  labels are closed sets (``validation.TOPICS``, ``REASONS``, ``FLAGS``), so the series stay
  a few dozen whatever the fleet's size. Device ids are never labels: a fleet of 100,000
  devices would be 100,000 series per reason in every scrape, and a hostile device would choose
  when to add its own.
* ``store_faults`` adds them to ``device_refusals``, one row per (device, topic, reason) with a
  count, the first and last time and the last detail, so that what one device sent wrong is
  shown for that device (``GET /api/v1/devices/{id}``, ``DeviceRefusals``), survives restarts
  and is the same on every replica.

This module neither checks messages (``validation``) nor decides when to store
(``fleet_server.telemetry.ingest``, whose writer thread calls ``store_faults``).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fleet_server.db import Database
from fleet_server.tables import DeviceRefusalRow
from fleet_server.telemetry.validation import FLAGS, Fault


class FaultCounter:
    """Faults per (topic, reason) since start, thread-safe (paho's thread and the writer add)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._counts[(fault.topic, fault.reason)] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


def store_faults(session: Session, faults: Iterable[Fault], now: datetime) -> None:
    """Add ``faults`` to their devices' rows (insert, or add to the count) in ``session``'s transaction."""
    grouped: dict[tuple[str, str, str], tuple[int, str]] = {}
    for fault in faults:
        key = (fault.device_id, fault.topic, fault.reason)
        count, _ = grouped.get(key, (0, ""))
        grouped[key] = (count + 1, fault.detail)  # the last detail wins, as last_at does
    if not grouped:
        return
    table = DeviceRefusalRow.__table__
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    rows = [{"device_id": d, "topic": t, "reason": r, "count": n, "first_at": now, "last_at": now, "detail": detail}
            for (d, t, r), (n, detail) in sorted(grouped.items())]  # sorted: rows locked in one order
    insert = dialect.insert(table)
    session.execute(insert.on_conflict_do_update(
        index_elements=["device_id", "topic", "reason"],
        set_={"count": table.c.count + insert.excluded.count, "last_at": insert.excluded.last_at,
              "detail": insert.excluded.detail}), rows)


class DeviceRefusals:
    """What the REST API shows of one device's refused and clamped messages (``device_refusals``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def of(self, device_id: str) -> dict[str, list[dict[str, Any]]]:
        """``refused_messages`` and ``clamped_messages``: per topic and reason, the count, the first
        and last time and the last detail."""
        with self.db.session() as session:
            rows: Sequence[DeviceRefusalRow] = list(session.scalars(
                select(DeviceRefusalRow).where(DeviceRefusalRow.device_id == device_id)
                .order_by(DeviceRefusalRow.topic, DeviceRefusalRow.reason)))
        shown: dict[str, list[dict[str, Any]]] = {"refused_messages": [], "clamped_messages": []}
        for row in rows:
            key = "clamped_messages" if row.reason in FLAGS else "refused_messages"
            shown[key].append({"topic": row.topic, "reason": row.reason, "count": row.count,
                               "first_at": _ts(row.first_at), "last_at": _ts(row.last_at), "detail": row.detail})
        return shown


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def totals(counts: Mapping[tuple[str, str], int]) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """A ``FaultCounter.snapshot`` split into (refused, clamped)."""
    refused = {k: n for k, n in counts.items() if k[1] not in FLAGS}
    clamped = {k: n for k, n in counts.items() if k[1] in FLAGS}
    return refused, clamped
