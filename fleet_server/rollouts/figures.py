"""A running stage's figures, read from the database for the rollout engine (issue 18).

``gather(session, query)`` answers a :class:`fleet_server.rollouts.machine.StageQuery` (the
current wave's members, the candidate, since when):

* shadow: the wave's ``shadow_records`` for the candidate, added up
  (``ShadowFigures.of_records``): what the devices compared, agreed on, skipped, failed on, and
  the latency buckets of both versions;
* canary: the wave's ``telemetry_records`` of the model since the wave began, one arm per
  version: the candidate's (B) and every other version's (A: what the devices serve; a wave
  may serve several). Feedback labels and correct answers come from ``/v1/feedback`` on the
  devices, per version that answered (docs/telemetry.md), so each arm's accuracy is that of the
  requests it answered.

Read-only, and only the rows of the wave's devices (in chunks of ids), counts summed by the
database: a stage gathers once per ``STAGE_FIGURES_EVERY`` per rollout, outside the rollout's
lock. What it costs grows with the wave and the stage's length (a row per device and telemetry
interval, e.g. 150,000 rows for 5,000 devices over 30 minutes of 60 s batches); not measured at
that size yet. The tables are written by ``fleet_server.telemetry``
(``ingest``, ``shadow``); this module does not judge (``fleet_server.rollouts.stage`` does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.rollouts.machine import StageQuery
from fleet_server.rollouts.stage import CANARY, CanaryFigures, Figures, ShadowFigures
from fleet_server.tables import ShadowRecordRow, TelemetryRecordRow

__all__ = ["gather"]

_CHUNK = 1000  # ids per IN (...) list


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start:start + _CHUNK]


def gather(session: Session, query: StageQuery) -> Figures:
    """The figures of ``query``'s wave, so far."""
    return _canary(session, query) if query.mode == CANARY else _shadow(session, query)


def _shadow(session: Session, query: StageQuery) -> ShadowFigures:
    """The counts are summed by the database, per device; only the latency buckets (JSON lists) are added here."""
    t = ShadowRecordRow
    total = ShadowFigures()
    devices = 0
    for chunk in _chunks(query.device_ids):
        where = (t.model == query.model, t.version == query.version, t.ts >= query.since, t.device_id.in_(chunk))
        for _device, compared, agreed, skipped, errors, rel, rel_rows in session.execute(
                select(t.device_id, func.sum(t.compared), func.sum(t.agreed), func.sum(t.skipped), func.sum(t.errors),
                       func.sum(t.relative_error_sum), func.count(t.relative_error_sum))
                .where(*where).group_by(t.device_id)):
            devices += 1
            total = total + ShadowFigures(int(compared or 0), int(agreed or 0), int(skipped or 0), int(errors or 0),
                                          float(rel or 0.0) if rel_rows else None)
        for serving, candidate in session.execute(select(t.serving_buckets, t.candidate_buckets).where(*where)):
            total = total + ShadowFigures(serving_buckets=tuple(serving or ()), candidate_buckets=tuple(candidate or ()))
    return replace(total, devices=devices)


def _canary(session: Session, query: StageQuery) -> CanaryFigures:
    t = TelemetryRecordRow
    arms = {True: [0, 0, 0, 0], False: [0, 0, 0, 0]}  # candidate? -> labels, correct, requests, errors
    devices: set[str] = set()
    for chunk in _chunks(query.device_ids):
        for device_id, version, labels, correct, count in session.execute(
                select(t.device_id, t.version, func.sum(t.feedback_labels), func.sum(t.feedback_correct),
                       func.sum(t.count))
                .where(t.model == query.model, t.ts >= query.since, t.device_id.in_(chunk))
                .group_by(t.device_id, t.version)):
            arm = arms[version == query.version]
            arm[0] += int(labels or 0)
            arm[1] += int(correct or 0)
            arm[2] += int(count or 0)
            if version == query.version:
                devices.add(device_id)
        # errors are a JSON object per record: summed here, for the candidate's rows only (few)
        for (errors,) in session.execute(select(t.errors).where(t.model == query.model, t.version == query.version,
                                                                t.ts >= query.since, t.device_id.in_(chunk))):
            arms[True][3] += sum(int(v) for v in (errors or {}).values())
    serving, candidate = arms[False], arms[True]
    return CanaryFigures(serving[0], min(serving[1], serving[0]), candidate[0], min(candidate[1], candidate[0]),
                         serving[2], candidate[2], candidate[3], len(devices))
