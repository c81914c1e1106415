"""Fleet views: the stored telemetry read back as per-device columns, fleet drift and alert inputs.

Everything here reads the rows ``fleet_server.telemetry.ingest`` stored for a time window (by the
batches' own timestamps, the end of each device's interval) and hands them to the pure cores:
``fleet_server.telemetry.drift`` adds the counts and scores them, ``fleet_server.telemetry.alerts`` names the
observations. Three consumers:

* ``device_columns``  state, versions, last seen, latest p95 latency, worst drift band per
  device: the extra columns of ``GET /api/v1/devices`` and ``edgefleet devices list``;
* ``model_drift``     per-feature PSI / JS / Hellinger of one model version merged over the
  fleet or by profile or label, plus accuracy and error rate by version;
* ``observations``    every value the alert rules watch (drift, accuracy, error rate,
  devices offline, halted rollouts).

A drift alert judges exactly the figure ``model_drift`` shows: both add the same rows (the
window ``telemetry_window_seconds`` back from the same moment) with the same
``_device_counts`` and score them with the same ``fleet_drift``; an observation also carries
the rows merged into it, so the rule can ignore a group that has too few to mean anything.

Read-only: it never writes, and reads the ``rollouts`` table only for its ``state`` column.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text

from edgefleet.errors import EdgefleetError
from edgefleet.telemetry import Feedback, ModelRecord, ReferenceProfile
from fleet_server.db import Database
from fleet_server.errors import InvalidInputError
from fleet_server.registry.bundle_cache import BundleCache
from fleet_server.tables import DeviceRow, TelemetryRecordRow
from fleet_server.telemetry.alerts import Observation, drift_observations, model_observations
from fleet_server.telemetry.drift import (
    FLEET,
    DeviceCounts,
    DriftReport,
    Totals,
    fleet_drift,
    merge,
)

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 3600.0
BAND_ORDER = ("no data", "stable", "moderate", "drift")


def check_by(by: str | None) -> str | None:
    """``None``/``fleet``, ``profile``, or ``label:NAME`` (a bare label name is accepted too)."""
    if by in (None, "", FLEET):
        return None
    assert by is not None
    name = by.removeprefix("label:")
    if by == "profile" or (name and len(name) <= 63 and name.replace("-", "").replace("_", "").replace(".", "").isalnum()):
        return by if by == "profile" else f"label:{name}"
    raise InvalidInputError(f"by: {by!r} is not a grouping", fix="use by=profile or by=label:NAME, e.g. label:site")


@dataclass(frozen=True)
class DeviceColumns:
    """What the device list shows beyond the registry's own fields."""

    state: str
    versions: Mapping[str, str]
    p95_ms: float | None
    drift_band: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "versions": dict(self.versions), "p95_ms": self.p95_ms,
                "drift_band": self.drift_band}


@dataclass(frozen=True)
class _Device:
    id: str
    profile: str
    labels: Mapping[str, str]
    online: bool
    status: str
    reported: Mapping[str, Any] | None


def _record(row: Any) -> ModelRecord:
    return ModelRecord(model=row.model, version=row.version, count=row.count, errors=row.errors or {},
                       outputs=tuple(row.outputs or ()), drift=tuple(tuple(f) for f in row.drift or ()),
                       feedback=Feedback(row.feedback_labels, row.feedback_correct))


def _state(device: _Device) -> str:
    if device.status != "enrolled":
        return device.status
    update = (device.reported or {}).get("update")
    phase = update.get("state") if isinstance(update, Mapping) else None
    presence = "online" if device.online else "offline"
    return presence if not isinstance(phase, str) or phase in ("", "idle") else f"{presence}/{phase}"


def _versions(device: _Device) -> dict[str, str]:
    models = (device.reported or {}).get("models")
    if not isinstance(models, Mapping):
        return {}
    return {str(n): str(m.get("version")) for n, m in sorted(models.items()) if isinstance(m, Mapping)}


class FleetViews:
    def __init__(self, db: Database, bundles: BundleCache, *, window_s: float = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.bundles = bundles
        self.window_s = window_s
        self.clock = clock

    # ---- loading ----------------------------------------------------------------------

    def _since(self, now: float | None, window_s: float | None) -> datetime:
        moment = self.clock() if now is None else now
        return datetime.fromtimestamp(moment - (window_s or self.window_s), UTC)

    def _devices(self, ids: Iterable[str] | None = None) -> dict[str, _Device]:
        with self.db.session() as session:
            query = select(DeviceRow.id, DeviceRow.profile, DeviceRow.labels, DeviceRow.online, DeviceRow.status,
                           DeviceRow.reported)
            if ids is not None:
                query = query.where(DeviceRow.id.in_(list(ids)))
            return {r.id: _Device(r.id, r.profile, dict(r.labels or {}), bool(r.online), r.status, r.reported)
                    for r in session.execute(query)}

    def _rows(self, since: datetime, model: str | None = None, version: str | None = None) -> list[Any]:
        t = TelemetryRecordRow
        query = select(t.device_id, t.model, t.version, t.ts, t.count, t.errors, t.p95_ms, t.outputs, t.drift,
                       t.feedback_labels, t.feedback_correct).where(t.ts >= since).order_by(t.ts)
        if model is not None:
            query = query.where(t.model == model)
        if version is not None:
            query = query.where(t.version == version)
        with self.db.session() as session:
            return list(session.execute(query))

    def reference(self, model: str, version: str) -> ReferenceProfile | None:
        try:
            return ReferenceProfile.from_dict(self.bundles.get(model, version).reference())
        except EdgefleetError as exc:
            log.debug("no reference for %s@%s: %s", model, version, exc)
            return None

    @staticmethod
    def _device_counts(rows: Sequence[Any], devices: Mapping[str, _Device]) -> list[DeviceCounts]:
        per_device: dict[str, list[ModelRecord]] = defaultdict(list)
        for row in rows:
            if row.device_id in devices:
                per_device[row.device_id].append(_record(row))
        return [DeviceCounts.from_records(d, devices[d].profile, devices[d].labels, records)
                for d, records in sorted(per_device.items())]

    # ---- views --------------------------------------------------------------------------

    def device_columns(self, *, now: float | None = None) -> dict[str, DeviceColumns]:
        """Per device: state, versions, latest p95 (worst model), worst drift band over the window."""
        devices = self._devices()
        rows = self._rows(self._since(now, None))
        latest_p95: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
        by_version: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for row in rows:  # ordered by ts: the last p95 seen per model is the latest
            if row.p95_ms is not None:
                latest_p95[row.device_id][(row.model, row.version)] = row.p95_ms
            if row.drift:
                by_version[(row.model, row.version)].append(row)
        bands: dict[str, str] = {}
        for (model, version), version_rows in by_version.items():
            reference = self.reference(model, version)
            if reference is None:
                continue
            for counts in self._device_counts(version_rows, devices):
                try:
                    band = fleet_drift(model, version, reference, [counts])[0].band
                except EdgefleetError as exc:
                    log.debug("drift of %s on %s@%s not scored: %s", counts.device_id, model, version, exc)
                    continue
                current = bands.get(counts.device_id, "no data")
                bands[counts.device_id] = max(current, band, key=BAND_ORDER.index)
        return {d.id: DeviceColumns(_state(d), _versions(d),
                                    max(latest_p95[d.id].values()) if latest_p95.get(d.id) else None,
                                    bands.get(d.id))
                for d in devices.values()}

    def inventory(self) -> list[tuple[str, dict[str, str]]]:
        """(presence or status, versions) per device: ``online``, ``offline`` or ``revoked``."""
        out = []
        for d in self._devices().values():
            state = d.status if d.status != "enrolled" else ("online" if d.online else "offline")
            out.append((state, _versions(d)))
        return out

    def model_drift(self, model: str, version: str, *, by: str | None = None, window_s: float | None = None,
                    now: float | None = None) -> dict[str, Any]:
        """Drift reports of one model version per group, and accuracy by version of the model."""
        by = check_by(by)
        reference = self.reference(model, version)  # NotFound for an unknown model propagates below
        if reference is None:
            self.bundles.get(model, version)
            raise InvalidInputError(f"{model}@{version} has no usable reference profile for drift",
                                    fix="convert the model with `edgefleet convert`, which writes reference.json")
        since = self._since(now, window_s)
        rows = self._rows(since, model)
        devices = self._devices({r.device_id for r in rows})
        reports = fleet_drift(model, version, reference,
                              self._device_counts([r for r in rows if r.version == version], devices), by=by)
        return {"model": model, "version": version, "by": by or FLEET, "window_s": window_s or self.window_s,
                "since": since.strftime("%Y-%m-%dT%H:%M:%SZ"), "groups": [r.to_dict() for r in reports],
                "versions": self._by_version(rows, devices)}

    def _by_version(self, rows: Sequence[Any], devices: Mapping[str, _Device]) -> list[dict[str, Any]]:
        totals: dict[str, Totals] = defaultdict(Totals)
        members: dict[str, set[str]] = defaultdict(set)
        for row in rows:
            if row.device_id in devices:
                totals[row.version] = totals[row.version] + Totals.of(_record(row))
                members[row.version].add(row.device_id)
        return [{"version": v, "devices": len(members[v]), "requests": t.count, "errors": t.error_count,
                 "error_rate": t.error_rate, "labels": t.labels, "correct": t.correct, "accuracy": t.accuracy}
                for v, t in sorted(totals.items())]

    # ---- alert inputs -------------------------------------------------------------------

    def observations(self, *, now: float | None = None) -> list[Observation]:
        """Every value the alert rules watch, as of ``now``."""
        rows = self._rows(self._since(now, None))
        devices = self._devices()
        out: list[Observation] = []
        per_version: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for row in rows:
            per_version[(row.model, row.version)].append(row)
        for (model, version), version_rows in sorted(per_version.items()):
            reports: list[DriftReport] = []
            try:
                # A device sending counts over other bins must not hide the rest of the fleet's alerts.
                counts = self._device_counts(version_rows, devices)
                out += model_observations(model, version, merge(FLEET, counts).totals)
                reference = self.reference(model, version)
                if reference is None:
                    continue
                label_names = sorted({k for c in counts for k in c.labels})
                for by in [None, "profile", *(f"label:{k}" for k in label_names)]:
                    reports += fleet_drift(model, version, reference, counts, by=by)
            except EdgefleetError as exc:
                log.warning("drift of %s@%s not scored: %s", model, version, exc)
                continue
            out += drift_observations(reports)
        out += self._offline(devices.values())
        out += self._rollouts()
        return out

    @staticmethod
    def _offline(devices: Iterable[_Device]) -> list[Observation]:
        groups: dict[str, int] = defaultdict(int)
        for d in devices:
            if d.status != "enrolled":
                continue
            for subject in (FLEET, f"profile={d.profile}", *(f"{k}={v}" for k, v in sorted(d.labels.items()))):
                groups[subject] += 0 if d.online else 1
        return [Observation("offline", s, float(n)) for s, n in sorted(groups.items())]

    def _rollouts(self) -> list[Observation]:
        # Plain SQL on purpose: the rollouts table belongs to the rollout engine, read here only.
        with self.db.session() as session:
            rows = session.execute(text("SELECT id, state FROM rollouts")).all()
        return [Observation("rollout_halted", f"rollout:{rid}", 1.0 if state == "halted" else 0.0)
                for rid, state in rows]

    def rollout_progress(self) -> list[dict[str, Any]]:
        """Per rollout: model, version, state and device counts by status (for /metrics)."""
        with self.db.session() as session:
            rows = session.execute(text("SELECT id, model, version, state, document FROM rollouts")).all()
        out = []
        for rid, model, version, state, document in rows:
            if isinstance(document, str):  # SQLite hands raw JSON text to a text() query
                document = json.loads(document)
            doc = document if isinstance(document, Mapping) else {}
            statuses: dict[str, int] = defaultdict(int)
            for device in doc.get("devices", []) or []:
                if isinstance(device, Mapping):
                    statuses[str(device.get("status"))] += 1
            out.append({"id": rid, "model": model, "version": version, "state": state, "devices": dict(statuses)})
        return out
