"""Shadow records in, stored once per (device, seq, model, candidate version): the ``sh`` key of a batch.

While a rollout's shadow stage runs (issue 18, docs/rollouts.md), each device mirrors live
requests to the candidate and reports, per interval, how many it compared, how many agreed,
how many it skipped under load, the candidate's errors and the latency buckets of both
versions (``edgefleet.telemetry.ShadowRecord``). ``shadow_rows`` turns a checked batch's records
into ``shadow_records`` rows (pure); ``store_shadow`` inserts them in the ingest's transaction,
ignoring a row already stored, so a re-sent batch counts once, exactly as its model records do.

The ingest (``fleet_server.telemetry.ingest``) calls both for the first copy of each batch; the
rollout engine reads the rows back, summed per wave (``fleet_server.rollouts.figures``). This
module does not judge anything (``fleet_server.rollouts.stage`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from edgefleet.telemetry import TelemetryBatch
from fleet_server.tables import ShadowRecordRow

__all__ = ["shadow_rows", "store_shadow"]

_KEY = ("device_id", "seq", "model", "version")


def shadow_rows(batch: TelemetryBatch, at: datetime) -> list[dict[str, Any]]:
    """The ``shadow_records`` rows of one checked batch, stored at ``at`` (the batch's time, as its records)."""
    return [{"device_id": batch.device_id, "seq": batch.seq, "model": r.model, "version": r.version,
             "serving": r.serving, "ts": at, "compared": r.compared, "agreed": r.agreed, "skipped": r.skipped,
             "errors": r.errors, "relative_error_sum": r.rel_error_sum, "serving_buckets": list(r.serving_buckets),
             "candidate_buckets": list(r.candidate_buckets)} for r in batch.shadow]


def store_shadow(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` in ``session``'s transaction; a row already stored (a re-sent batch) is left alone.

    A batch carries one row per candidate at most and only devices in a shadow stage send any,
    so a plain multi-row insert is enough here (the model records need ``unnest`` for speed).
    """
    if not rows:
        return
    table = ShadowRecordRow.__table__
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(table).on_conflict_do_nothing(index_elements=list(_KEY)), [dict(r) for r in rows])
