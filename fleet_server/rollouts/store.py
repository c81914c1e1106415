"""Where a rollout lives in the database: a header row plus one row per device, and the copies held in memory.

``rollouts`` holds the pure core's spec (``Rollout.spec_to_dict``: written once at create; the
wave plan in it names every eligible device), its header (``Rollout.header_to_dict``: state,
current wave, stages), the log and ``revision``, which grows by one with every stored change.
``rollout_devices`` holds one ``DeviceRecord`` per row. Storing a change writes the device
rows the core reports changed (``Rollout.changed_devices``) and the header, so a batch of
device events costs what it changes, not the fleet size (issue 13; before, the whole document
with every record was loaded and stored per transaction).

``RolloutStore`` also holds, per live rollout, the ``Rollout`` this process last stored or read
with the revision it had. The engine locks the header row (``FOR UPDATE``), then ``load``
reuses the held copy if the stored revision is still that one (nobody, no other replica,
changed the rollout since) and reads the device rows otherwise. A held copy is handed to ONE
caller at a time (``load`` takes it out; ``keep`` puts it back after the commit), so two
threads never share a mutable ``Rollout``, and a transaction that fails leaves nothing held
that the database does not have. With each copy kept it also keeps the rollout's summary (the
API view's part that comes from the core, made by the ``summarise`` it is given) by revision:
a status request at an unchanged revision is answered from it, without reading the device
rows and without taking the copy away from the engine. Reads that need the records
(``read``) take the header's share lock on PostgreSQL (``FOR SHARE``), so the device rows
they read belong to the revision they read (on SQLite a transaction reads one snapshot
anyway), and they never hand out or hold the engine's copy.

This module decides nothing about rollouts (``fleet_server.rollouts.machine`` does) and takes no
row locks of its own beyond the share lock of a read (``RolloutEngine`` locks for changes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, defer

from fleet_server.rollouts.machine import DeviceRecord, DeviceStatus, Rollout, RolloutState
from fleet_server.tables import RolloutDeviceRow, RolloutRow

__all__ = ["RolloutStore", "device_row", "record_of"]

# Rollouts that may still change: only these are held in memory.
_HELD_STATES = frozenset({RolloutState.PENDING, RolloutState.RUNNING, RolloutState.PAUSED})
_CHUNK = 1000  # rows per statement
_FIELDS = ("device_id", "profile", "wave", "status", "previous_version", "online", "joined_late", "last_event",
           "reason", "assigned_at", "finished_at", "offline_since", "rolled_back_at", "serves", "counter")
_COLUMNS = tuple(getattr(RolloutDeviceRow, f) for f in _FIELDS)


def device_row(rollout_id: str, record: DeviceRecord) -> dict[str, Any]:
    """``record`` as a ``rollout_devices`` row."""
    return {"rollout_id": rollout_id, "device_id": record.device_id, "profile": record.profile, "wave": record.wave,
            "status": record.status.value, "previous_version": record.previous_version, "online": record.online,
            "joined_late": record.joined_late, "last_event": record.last_event, "reason": record.reason,
            "assigned_at": record.assigned_at, "finished_at": record.finished_at,
            "offline_since": record.offline_since, "rolled_back_at": record.rolled_back_at, "serves": record.serves,
            "counter": record.counter}


def record_of(row: Row[Any] | Sequence[Any]) -> DeviceRecord:
    """The ``DeviceRecord`` of a row selected as ``_COLUMNS`` (times come back aware UTC: ``UTCDateTime``)."""
    (device_id, profile, wave, status, previous, online, joined_late, last_event, reason, assigned_at, finished_at,
     offline_since, rolled_back_at, serves, counter) = tuple(row)
    return DeviceRecord(device_id, profile, wave, DeviceStatus(status), previous, bool(online), bool(joined_late),
                        last_event, reason, assigned_at, finished_at, offline_since, rolled_back_at, serves, counter)


class RolloutStore:
    """Loads and stores rollouts as header and device rows; holds the live ones in memory by revision."""

    def __init__(self, summarise: Callable[[Rollout], dict[str, Any]]) -> None:
        self._summarise = summarise
        self._held: dict[str, tuple[int, Rollout]] = {}
        self._summaries: dict[str, tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()  # guards _held and _summaries; never held across database work

    # -- the copies held in memory ----------------------------------------------------------

    def _take(self, rollout_id: str, revision: int) -> Rollout | None:
        with self._lock:
            held = self._held.get(rollout_id)
            if held is None or held[0] != revision:
                return None
            del self._held[rollout_id]
            return held[1]

    def keep(self, rollout_id: str, revision: int, rollout: Rollout) -> None:
        """Hold ``rollout`` as the state of revision ``revision`` (call once that revision is committed).

        The caller gives the copy up: it must not use it afterwards.
        """
        self._remember(rollout_id, revision, rollout)
        with self._lock:
            if rollout.state not in _HELD_STATES:
                self._held.pop(rollout_id, None)
                return
            held = self._held.get(rollout_id)
            if held is None or held[0] < revision:
                self._held[rollout_id] = (revision, rollout)

    def _remember(self, rollout_id: str, revision: int, rollout: Rollout) -> None:
        with self._lock:
            known = self._summaries.get(rollout_id)
            if known is not None and known[0] >= revision:
                return
        summary = self._summarise(rollout)  # O(waves): the core keeps its counts
        with self._lock:
            known = self._summaries.get(rollout_id)
            if known is None or known[0] < revision:
                self._summaries[rollout_id] = (revision, summary)

    def summary(self, rollout_id: str, revision: int) -> dict[str, Any] | None:
        """The summary of the rollout at ``revision``, if this process stored or read that revision."""
        with self._lock:
            known = self._summaries.get(rollout_id)
        return known[1] if known is not None and known[0] == revision else None

    def forget(self) -> None:
        """Drop every held copy and summary (the next load reads the rows)."""
        with self._lock:
            self._held.clear()
            self._summaries.clear()

    # -- reading ----------------------------------------------------------------------------

    @staticmethod
    def header_query(rollout_id: str) -> Any:
        """The header row's select; the spec (which holds the wave plan) is read only when needed."""
        return select(RolloutRow).where(RolloutRow.id == rollout_id).options(defer(RolloutRow.spec))

    def load(self, session: Session, row: RolloutRow) -> Rollout:
        """The rollout ``row`` heads, at ``row.revision``: the held copy if it is that revision, else read.

        The caller must hold a lock on ``row`` (update or share) so the device rows read
        are those of this revision. The copy returned is the caller's until it calls ``keep``.
        """
        held = self._take(row.id, row.revision)
        if held is not None:
            return held
        return self._read_rows(session, row)

    @staticmethod
    def _read_rows(session: Session, row: RolloutRow) -> Rollout:
        records = (record_of(r) for r in session.execute(
            select(*_COLUMNS).where(RolloutDeviceRow.rollout_id == row.id)))
        rollout = Rollout.from_parts(row.spec, row.header, records)
        rollout.mark_stored()
        return rollout

    def read(self, session: Session, rows: Iterable[RolloutRow]) -> list[tuple[RolloutRow, Rollout]]:
        """Rollouts read from their rows, the caller's own (never the engine's held copy).

        ``rows`` must have been selected with ``share_lock`` applied. Their summaries are kept.
        """
        out = []
        for row in rows:
            rollout = self._read_rows(session, row)
            self._remember(row.id, row.revision, rollout)
            out.append((row, rollout))
        return out

    @staticmethod
    def share_lock(session: Session, query: Any) -> Any:
        """``query`` with the share lock that makes its device rows match its revision (PostgreSQL)."""
        if session.get_bind().dialect.name == "postgresql":
            return query.with_for_update(read=True)
        return query

    @staticmethod
    def in_flight(session: Session, live_states: Sequence[str], statuses: Sequence[str]) -> set[str]:
        """Ids of the devices with one of ``statuses`` in a rollout in one of ``live_states``."""
        return set(session.scalars(
            select(RolloutDeviceRow.device_id).join(RolloutRow, RolloutRow.id == RolloutDeviceRow.rollout_id)
            .where(RolloutRow.state.in_(live_states), RolloutDeviceRow.status.in_(statuses))))

    @staticmethod
    def status_counts(session: Session, rollout_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Per rollout, how many device records have each status (for views that need no more)."""
        out: dict[str, dict[str, int]] = {r: {} for r in rollout_ids}
        for start in range(0, len(rollout_ids), _CHUNK):
            for rollout_id, status, count in session.execute(
                    select(RolloutDeviceRow.rollout_id, RolloutDeviceRow.status, func.count())
                    .where(RolloutDeviceRow.rollout_id.in_(rollout_ids[start:start + _CHUNK]))
                    .group_by(RolloutDeviceRow.rollout_id, RolloutDeviceRow.status)):
                out[rollout_id][status] = int(count)
        return out

    # -- writing ----------------------------------------------------------------------------

    def add(self, session: Session, row: RolloutRow, rollout: Rollout, now: datetime) -> None:
        """Store a new rollout: ``row`` (already added to ``session``) gets spec and header, every record a row."""
        row.spec = rollout.spec_to_dict()
        row.revision = 0
        self._write_header(row, rollout, now)
        session.flush()  # the header row first: the device rows reference it
        self._upsert(session, row.id, list(rollout.devices.values()))
        rollout.mark_stored()

    def save(self, session: Session, row: RolloutRow, rollout: Rollout, now: datetime) -> None:
        """Store a change: the header, and the device rows of the records changed since the last store."""
        changed = rollout.changed_devices()
        self._upsert(session, row.id, [rollout.devices[d] for d in sorted(changed)])
        self._write_header(row, rollout, now)
        rollout.mark_stored()

    @staticmethod
    def _write_header(row: RolloutRow, rollout: Rollout, now: datetime) -> None:
        row.header = rollout.header_to_dict()
        row.state = rollout.state.value
        row.revision = (row.revision or 0) + 1
        row.updated_at = now
        row.next_tick_at = rollout.next_deadline(exact=False)  # a bound: exact would scan the devices in flight

    @staticmethod
    def _upsert(session: Session, rollout_id: str, records: Sequence[DeviceRecord]) -> None:
        """Insert or replace the rows of ``records`` (a record the core added late has no row yet)."""
        if not records:
            return
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # On the table, not the ORM class: the ORM's bulk path costs more than the statement.
        statement = insert(cast(Table, RolloutDeviceRow.__table__))
        statement = statement.on_conflict_do_update(
            index_elements=[RolloutDeviceRow.rollout_id, RolloutDeviceRow.device_id],
            set_={f: statement.excluded[f] for f in _FIELDS if f != "device_id"})
        rows = [device_row(rollout_id, r) for r in records]
        for start in range(0, len(rows), _CHUNK):
            session.execute(statement, rows[start:start + _CHUNK])
