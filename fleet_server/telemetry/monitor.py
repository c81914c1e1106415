"""The alert loop: every ``evaluate_every_s``, the rules of ``[alerts]`` against the stored fleet data.

One round: lock the ``alert_state`` row (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite an
UPDATE that takes the single writer lock), resume the evaluator from the episodes stored there,
feed it ``FleetViews.observations`` (drift, accuracy, error rate, devices offline, halted
rollouts), store the new episodes and commit, then hand the events to the sinks (log, webhook,
retraining command). Because the episodes live in the database, a restarted server does not
fire an alert again, and replicas serialise on the row: a replica that finds the round done
less than half an interval ago skips it, so N replicas do not evaluate N times as often.

Delivery happens after the commit: a server that dies between the two loses those events
(at most once, like the sinks themselves, which do not retry; the log of the surviving
replicas still shows the state through /metrics).

This module decides nothing about thresholds (``fleet_server.telemetry.alerts``) and computes no drift
(``fleet_server.telemetry.views``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from fleet_server.db import Database
from fleet_server.errors import ServerError
from fleet_server.tables import AlertStateRow
from fleet_server.telemetry._periodic import Periodic
from fleet_server.telemetry.alert_sinks import AlertSink, dispatch, sinks_from_config
from fleet_server.telemetry.alerts import AlertConfig, AlertEvaluator, AlertEvent
from fleet_server.telemetry.views import FleetViews

log = logging.getLogger(__name__)

STATE_KEY = "alerts"


class AlertMonitor:
    def __init__(self, db: Database, views: FleetViews, config: AlertConfig, *,
                 sinks: Sequence[AlertSink] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.views = views
        self.config = config
        self.sinks = list(sinks) if sinks is not None else sinks_from_config(config)
        self.clock = clock
        self._loop = Periodic("edgefleet-alerts", self._evaluate_logged, config.evaluate_every_s, at_once=False)

    def _lock_row(self, session: Any) -> AlertStateRow:
        insert = postgresql.insert if self.db.engine.dialect.name == "postgresql" else sqlite.insert
        session.execute(insert(AlertStateRow).values(name=STATE_KEY, episodes=[], evaluated_at=None)
                        .on_conflict_do_nothing(index_elements=["name"]))
        if self.db.engine.dialect.name == "sqlite":
            # A no-op write takes SQLite's writer lock now, before the read (no FOR UPDATE there).
            session.execute(update(AlertStateRow).where(AlertStateRow.name == STATE_KEY)
                            .values(name=AlertStateRow.name))
        row: AlertStateRow = session.scalars(select(AlertStateRow).where(AlertStateRow.name == STATE_KEY)
                                             .with_for_update()).one()
        return row

    def evaluate(self, now: float | None = None) -> list[AlertEvent]:
        """One round; returns the events it fired or resolved (already dispatched)."""
        if not self.config.rules:
            return []
        moment = self.clock() if now is None else now
        with self.db.session() as session:
            row = self._lock_row(session)
            last = row.evaluated_at.timestamp() if row.evaluated_at is not None else None
            if last is not None and 0 <= moment - last < self.config.evaluate_every_s / 2:
                return []  # another replica (or this one) has just done this round
            evaluator = AlertEvaluator(self.config.rules, row.episodes or [])
            events = evaluator.evaluate(self.views.observations(now=moment), now=moment)
            row.episodes = evaluator.state()
            row.evaluated_at = datetime.fromtimestamp(moment, UTC)
        if events:
            dispatch(events, self.sinks)
        return events

    def episodes(self) -> list[dict[str, Any]]:
        """The stored episodes (pending and firing), for /metrics."""
        with self.db.session() as session:
            row = session.get(AlertStateRow, STATE_KEY)
            return list(row.episodes) if row is not None else []

    def start(self) -> AlertMonitor:
        if self.config.rules:
            self._loop.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._loop.stop(timeout)

    def _evaluate_logged(self) -> None:
        try:
            self.evaluate()
        except (SQLAlchemyError, ServerError):
            log.exception("alert evaluation failed; retrying in %.0f s", self.config.evaluate_every_s)
