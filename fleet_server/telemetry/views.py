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

One device cannot break a view for the fleet (issue 14). Ingest validates what it stores, but
rows stored before it did, or by an older server, may hold anything JSON can: every row is read
defensively. A batch whose counts are not counts (a list where bins were expected, 2**64, a
string) is skipped; drift or output counts over other bins than the bundle's reference are
dropped from that batch (its requests and errors still count); batches dated after the view's
moment (plus ``FUTURE_SKEW_S``) are not counted in any window; a ``reported`` document whose
``models`` is not an object shows no versions. Each is told, per device, in the device's
``problems`` column and the drift view's ``skipped`` list, and never fails the view.

Read-only: it never writes, and reads the ``rollouts`` table only for its ``state`` column.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Text, bindparam, cast, func, select, text

from edgefleet.errors import EdgefleetError
from edgefleet.telemetry import Feedback, ModelRecord, ReferenceProfile, TelemetryError
from fleet_server.db import Database
from fleet_server.errors import InvalidInputError
from fleet_server.registry.bundle_cache import BundleCache
from fleet_server.tables import DeviceRow, TelemetryRecordRow
from fleet_server.telemetry.alerts import Observation, drift_observations, model_observations
from fleet_server.telemetry.drift import (
    FLEET,
    BandScorer,
    DeviceCounts,
    DriftReport,
    Totals,
    fleet_drift,
    group_of,
    merge,
    misfit,
)
from fleet_server.telemetry.listing import Listed

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 3600.0
BAND_ORDER = ("no data", "stable", "moderate", "drift")
# Batches dated later than this after the view's moment are not counted (a device clock may run
# a little ahead; one set to the year 2999 must not add its requests to every window).
FUTURE_SKEW_S = 300.0
# The largest count a view adds. A batch counts one interval of one device: 2**40 requests is
# far beyond any, and sums of many such stay inside int64 (numpy adds the drift bins in int64).
MAX_COUNT = 2**40
# Problems told per device: enough to see what is wrong, bounded however much a device sends.
MAX_PROBLEMS = 5
# Rollout states that do not change any more (fleet_server.rollouts.machine, read here as text:
# telemetry does not import the rollout engine); /metrics keeps the last few of them.
FINISHED_ROLLOUT_STATES = frozenset({"completed", "aborted", "rolled_back"})
KEEP_FINISHED_ROLLOUTS = 5
# Parsed JSON documents kept by text (devices' reports and labels); more devices than this and the
# memo starts over now and then.
MEMO_SIZE = 50_000
_MISSING = object()
# Update states in which nothing is in flight (the agent's update machine: idle, or an outcome kept).
SETTLED_PHASES = frozenset({"idle", "committed", "rolled_back", "failed"})


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
class VersionFigures:
    """One model version over the window: its totals, and its drift reports as (by, report)."""

    model: str
    version: str
    totals: Totals
    reports: tuple[tuple[str, DriftReport], ...]


@dataclass(frozen=True)
class DeviceColumns:
    """What the device list shows beyond the registry's own fields."""

    state: str
    versions: Mapping[str, str]
    p95_ms: float | None
    drift_band: str | None
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "versions": dict(self.versions), "p95_ms": self.p95_ms,
                "drift_band": self.drift_band, "problems": list(self.problems)}


class Problems:
    """What a view skipped or ignored, per device: at most ``MAX_PROBLEMS`` lines each, and a count."""

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = defaultdict(list)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, device_id: str, line: str) -> None:
        self.counts[device_id] += 1
        if len(self.lines[device_id]) < MAX_PROBLEMS and line not in self.lines[device_id]:
            self.lines[device_id].append(line)

    def of(self, device_id: str) -> tuple[str, ...]:
        lines = self.lines.get(device_id, [])
        more = self.counts.get(device_id, 0) - len(lines)
        return (*lines, f"... and {more} more") if more > 0 else tuple(lines)

    def to_list(self) -> list[dict[str, Any]]:
        return [{"device_id": d, "problems": list(self.of(d))} for d in sorted(self.lines)]


@dataclass(frozen=True)
class _Device:
    id: str
    profile: str
    labels: Mapping[str, str]
    online: bool
    status: str
    reported: Any  # a JSON object as the agent sends it; anything JSON can be in older rows
    hostname: str = ""
    reported_text: str | None = None  # as stored: the memo key of its versions


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _too_large(record: ModelRecord) -> bool:
    # max() in C: the drift counts are hundreds per row.
    return (record.count > MAX_COUNT or any(n > MAX_COUNT for n in record.errors.values())
            or max(record.outputs, default=0) > MAX_COUNT or record.feedback.labels > MAX_COUNT
            or max(map(max, filter(None, record.drift)), default=0) > MAX_COUNT)


def _record(row: Any, problems: Problems) -> ModelRecord | None:
    """The stored row as a checked ``ModelRecord``, or None (and a problem told) if it is not one."""
    where = f"{row.model}@{row.version}: a batch of {row.ts:%Y-%m-%dT%H:%M:%SZ} was skipped"
    drift = row.drift or ()
    if not isinstance(drift, (list, tuple)) or not all(isinstance(f, (list, tuple)) for f in drift):
        problems.add(row.device_id, f"{where}: its drift counts are not a list of per-feature lists")
        return None
    try:
        record = ModelRecord(model=row.model, version=row.version, count=row.count, errors=row.errors or {},
                             outputs=tuple(row.outputs or ()), drift=tuple(tuple(f) for f in drift),
                             feedback=Feedback(row.feedback_labels or 0, row.feedback_correct or 0))
    except (TelemetryError, TypeError, ValueError) as exc:  # Type/ValueError: dict() or tuple() of a non-list
        problems.add(row.device_id, f"{where}: {getattr(exc, 'message', None) or _shown(exc)}")
        return None
    if _too_large(record):
        problems.add(row.device_id, f"{where}: a count is over {MAX_COUNT}")
        return None
    return record


def _fitted(device_id: str, record: ModelRecord, reference: ReferenceProfile | None,
            problems: Problems) -> ModelRecord:
    """The record with the counts the reference cannot score dropped (its totals still count)."""
    reason = misfit(record, reference)
    if reason is not None:
        if reference is not None:  # without a reference nothing is scored: nothing to tell
            problems.add(device_id, f"{record.model}@{record.version}: {reason}: those counts were ignored")
        return dataclasses.replace(record, drift=(), outputs=())
    if record.outputs and (reference is None or not reference.output_counts):
        return dataclasses.replace(record, outputs=())  # never scored; kept out of the merge
    return record


def _state(device: _Device) -> str:
    if device.status != "enrolled":
        return device.status
    update = device.reported.get("update") if isinstance(device.reported, Mapping) else None
    phase = update.get("state") if isinstance(update, Mapping) else None
    presence = "online" if device.online else "offline"
    return presence if not isinstance(phase, str) or phase in ("", "idle") else f"{presence}/{phase[:32]}"


def _versions(device: _Device, problems: Problems | None = None) -> dict[str, str]:
    """Model -> version as reported; a ``reported`` or ``models`` of another shape shows none."""
    def tell(line: str) -> None:
        if problems is not None:
            problems.add(device.id, line)

    if device.reported is None:
        return {}
    if not isinstance(device.reported, Mapping):
        tell(f"reported: a JSON {type(device.reported).__name__}, not an object: ignored")
        return {}
    models = device.reported.get("models")
    if models is None:
        return {}
    if not isinstance(models, Mapping):
        tell(f"reported.models: a JSON {type(models).__name__}, not an object of model -> version: ignored")
        return {}
    versions = {}
    for name, entry in sorted(models.items(), key=lambda item: str(item[0])):
        version = entry.get("version") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or len(name) > 64 or not isinstance(version, str) or len(version) > 128:
            tell(f"reported.models[{_shown(name)}]: no version string: ignored")
            continue
        versions[name] = version
    return versions


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Fresh:
    """How old a drift group's figures are: its newest batch, and its newest batch with feature counts."""

    batch: float | None = None
    features: float | None = None

    def to_dict(self, now: float) -> dict[str, Any]:
        def age(ts: float | None) -> float | None:
            return None if ts is None else round(max(0.0, now - ts), 1)

        return {"as_of": None if self.batch is None else _iso(self.batch), "age_s": age(self.batch),
                "features_as_of": None if self.features is None else _iso(self.features),
                "features_age_s": age(self.features)}


def _freshness(rows: Sequence[Any], counts: Sequence[DeviceCounts], by: str | None) -> dict[str, _Fresh]:
    """Per drift group, the newest batch and the newest batch carrying feature counts (rows of one
    model version; a device that sends features on every Nth batch has older feature figures)."""
    group = {c.device_id: group_of(c, by) for c in counts}
    fresh: dict[str, _Fresh] = {}
    for row in rows:
        name = group.get(row.device_id)
        if name is None:
            continue
        ts = row.ts.replace(tzinfo=UTC).timestamp() if row.ts.tzinfo is None else row.ts.timestamp()
        old = fresh.get(name, _Fresh())
        fresh[name] = _Fresh(max(ts, old.batch or ts), max(ts, old.features or ts) if row.drift else old.features)
    return fresh


class FleetViews:
    def __init__(self, db: Database, bundles: BundleCache, *, window_s: float = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.bundles = bundles
        self.window_s = window_s
        self.clock = clock
        self._memo: dict[str, Any] = {}
        self._versions_memo: dict[str, dict[str, str]] = {}

    # ---- loading ----------------------------------------------------------------------

    def _moment(self, now: float | None) -> float:
        return self.clock() if now is None else now

    def _since(self, now: float | None, window_s: float | None) -> datetime:
        return datetime.fromtimestamp(self._moment(now) - (window_s or self.window_s), UTC)

    def _until(self, now: float | None) -> datetime:
        return datetime.fromtimestamp(self._moment(now) + FUTURE_SKEW_S, UTC)

    def _devices(self, ids: Iterable[str] | None = None) -> dict[str, _Device]:
        with self.db.session() as session:
            # The JSON columns as text, parsed through a memo: at 10,000 devices decoding every
            # report cost ~0.5 s a read, and a report rarely changes between two reads.
            query = select(DeviceRow.id, DeviceRow.profile, cast(DeviceRow.labels, Text).label("labels"),
                           DeviceRow.online, DeviceRow.status, cast(DeviceRow.reported, Text).label("reported"),
                           DeviceRow.hostname)
            if ids is not None:
                query = query.where(DeviceRow.id.in_(list(ids)))
            return {r.id: _Device(r.id, r.profile, dict(self._parsed(r.labels) or {}), bool(r.online), r.status,
                                  self._parsed(r.reported), r.hostname or "", r.reported)
                    for r in session.execute(query)}

    def _versions(self, device: _Device) -> dict[str, str]:
        """``_versions`` of a device (problems untold), memoised by its report's text."""
        if device.reported_text is None:
            return _versions(device)
        versions = self._versions_memo.get(device.reported_text)
        if versions is None:
            if len(self._versions_memo) >= MEMO_SIZE:
                self._versions_memo.clear()
            versions = self._versions_memo[device.reported_text] = _versions(device)
        return versions

    def _parsed(self, document: str | None) -> Any:
        """A JSON column's value from its text, memoised (read-only: the value may be shared)."""
        if document is None:
            return None
        memo = self._memo
        value = memo.get(document, _MISSING)
        if value is _MISSING:
            if len(memo) >= MEMO_SIZE:
                memo.clear()  # crude but bounded: the next reads fill it again
            value = memo[document] = json.loads(document)
        return value

    def _rows(self, since: datetime, until: datetime, model: str | None = None,
              devices: Iterable[str] | None = None) -> list[Any]:
        t = TelemetryRecordRow
        query = select(t.device_id, t.model, t.version, t.ts, t.count, t.errors, t.p95_ms, t.outputs, t.drift,
                       t.feedback_labels, t.feedback_correct).where(t.ts >= since, t.ts <= until).order_by(t.ts)
        if model is not None:
            query = query.where(t.model == model)
        if devices is not None:
            query = query.where(t.device_id.in_(list(devices)))
        with self.db.session() as session:
            return list(session.execute(query))

    def _future(self, until: datetime, problems: Problems, model: str | None = None,
                devices: Iterable[str] | None = None) -> None:
        """Tell each device whose batches are dated after ``until``: they count in no window."""
        t = TelemetryRecordRow
        query = select(t.device_id, func.count()).where(t.ts > until).group_by(t.device_id)
        if model is not None:
            query = query.where(t.model == model)
        if devices is not None:
            query = query.where(t.device_id.in_(list(devices)))
        with self.db.session() as session:
            for device_id, n in session.execute(query):
                problems.add(device_id, f"{n} telemetry batch(es) dated after {until:%Y-%m-%dT%H:%M:%SZ} "
                                        "(a clock far ahead?) are not counted")

    def reference(self, model: str, version: str) -> ReferenceProfile | None:
        try:
            return ReferenceProfile.from_dict(self.bundles.get(model, version).reference())
        except EdgefleetError as exc:
            log.debug("no reference for %s@%s: %s", model, version, exc)
            return None

    def _by_model_version(self, rows: Sequence[Any], devices: Mapping[str, _Device], problems: Problems,
                          *, fit: bool = True) -> dict[tuple[str, str], list[tuple[str, ModelRecord]]]:
        """The checked records of known devices per (model, version); with ``fit``, counts the
        version's reference cannot score are dropped (``_fitted``)."""
        out: dict[tuple[str, str], list[tuple[str, ModelRecord]]] = defaultdict(list)
        references: dict[tuple[str, str], ReferenceProfile | None] = {}
        for row in rows:
            if row.device_id not in devices:
                continue
            record = _record(row, problems)
            if record is None:
                continue
            key = (record.model, record.version)
            if fit:
                if key not in references:
                    references[key] = self.reference(*key)
                record = _fitted(row.device_id, record, references[key], problems)
            out[key].append((row.device_id, record))
        return out

    @staticmethod
    def _device_counts(records: Sequence[tuple[str, ModelRecord]],
                       devices: Mapping[str, _Device]) -> list[DeviceCounts]:
        per_device: dict[str, list[ModelRecord]] = defaultdict(list)
        for device_id, record in records:
            per_device[device_id].append(record)
        return [DeviceCounts.from_records(d, devices[d].profile, devices[d].labels, device_records)
                for d, device_records in sorted(per_device.items())]

    # ---- views --------------------------------------------------------------------------

    def device_columns(self, *, now: float | None = None, ids: Iterable[str] | None = None) -> dict[str, DeviceColumns]:
        """Per device: state, versions, latest p95 (worst model), worst drift band over the window,
        and the problems its data had (what the views skipped). ``ids``: only these devices."""
        devices = self._devices(ids)
        problems = Problems()
        until = self._until(now)
        rows = self._rows(self._since(now, None), until, devices=None if ids is None else list(devices))
        self._future(until, problems, devices=None if ids is None else list(devices))
        latest_p95: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
        for row in rows:  # ordered by ts: the last p95 seen per model is the latest
            p95 = row.p95_ms
            if isinstance(p95, (int, float)) and math.isfinite(p95) and 0 <= p95 < 1e9:
                latest_p95[row.device_id][(row.model, row.version)] = float(p95)
        bands: dict[str, str] = {}
        for (model, version), records in self._by_model_version(rows, devices, problems).items():
            with_drift = [(d, r) for d, r in records if r.drift]
            reference = self.reference(model, version) if with_drift else None
            if reference is None:
                continue
            scorer = BandScorer(reference)
            for counts in self._device_counts(with_drift, devices):
                try:
                    band = scorer.band(counts.features)
                except EdgefleetError as exc:  # fitted counts do fit: kept so no view fails on a surprise
                    problems.add(counts.device_id, f"{model}@{version}: drift not scored: {exc.message}")
                    continue
                current = bands.get(counts.device_id, "no data")
                bands[counts.device_id] = max(current, band, key=BAND_ORDER.index)
        versions = {d.id: _versions(d, problems) for d in devices.values()}
        return {d.id: DeviceColumns(_state(d), versions[d.id],
                                    max(latest_p95[d.id].values()) if latest_p95.get(d.id) else None,
                                    bands.get(d.id), problems.of(d.id))
                for d in devices.values()}

    def listed(self) -> list[Listed]:
        """Every device as the console's summary and device pages filter it (``listing``): no telemetry read."""
        return [Listed(d.id, d.hostname, d.profile, d.labels,
                       d.status if d.status != "enrolled" else ("online" if d.online else "offline"),
                       self._versions(d))
                for d in self._devices().values()]

    def inventory(self) -> list[tuple[str, dict[str, str]]]:
        """(presence or status, versions) per device: ``online``, ``offline`` or ``revoked``."""
        out = []
        for d in self._devices().values():
            state = d.status if d.status != "enrolled" else ("online" if d.online else "offline")
            out.append((state, self._versions(d)))
        return out

    def model_drift(self, model: str, version: str, *, by: str | None = None, window_s: float | None = None,
                    now: float | None = None) -> dict[str, Any]:
        """Drift reports of one model version per group, accuracy by version of the model, and the
        devices whose data was skipped (``skipped``)."""
        by = check_by(by)
        reference = self.reference(model, version)  # NotFound for an unknown model propagates below
        if reference is None:
            self.bundles.get(model, version)
            raise InvalidInputError(f"{model}@{version} has no usable reference profile for drift",
                                    fix="convert the model with `edgefleet convert`, which writes reference.json")
        since, until = self._since(now, window_s), self._until(now)
        rows = self._rows(since, until, model)
        devices = self._devices({r.device_id for r in rows})
        problems = Problems()
        self._future(until, problems, model)
        records = self._by_model_version(rows, devices, problems)
        counts = self._device_counts(records.get((model, version), []), devices)
        reports = fleet_drift(model, version, reference, counts, by=by)
        fresh = _freshness([r for r in rows if r.model == model and r.version == version], counts, by)
        moment = self._moment(now)
        return {"model": model, "version": version, "by": by or FLEET, "window_s": window_s or self.window_s,
                "since": since.strftime("%Y-%m-%dT%H:%M:%SZ"), "now": _iso(moment),
                "groups": [r.to_dict() | fresh.get(r.group, _Fresh()).to_dict(moment) for r in reports],
                "versions": self._by_version(records), "skipped": problems.to_list()}

    @staticmethod
    def _by_version(records: Mapping[tuple[str, str], Sequence[tuple[str, ModelRecord]]]) -> list[dict[str, Any]]:
        totals: dict[str, Totals] = defaultdict(Totals)
        members: dict[str, set[str]] = defaultdict(set)
        for (_, version), version_records in records.items():
            for device_id, record in version_records:
                totals[version] = totals[version] + Totals.of(record)
                members[version].add(device_id)
        return [{"version": v, "devices": len(members[v]), "requests": t.count, "errors": t.error_count,
                 "error_rate": t.error_rate, "labels": t.labels, "correct": t.correct, "accuracy": t.accuracy}
                for v, t in sorted(totals.items())]

    # ---- alert inputs -------------------------------------------------------------------

    def version_figures(self, *, now: float | None = None) -> list[VersionFigures]:
        """Per model version with telemetry in the window: its totals and its drift reports for the
        fleet, by profile and by every label name (the alert rules' inputs, and the gauges of
        ``/metrics``)."""
        rows = self._rows(self._since(now, None), self._until(now))
        devices = self._devices()
        return self._figures(rows, devices)

    def _figures(self, rows: Sequence[Any], devices: Mapping[str, _Device]) -> list[VersionFigures]:
        problems = Problems()
        out: list[VersionFigures] = []
        for (model, version), records in sorted(self._by_model_version(rows, devices, problems).items()):
            try:
                counts = self._device_counts(records, devices)
                totals = merge(FLEET, counts).totals
            except EdgefleetError as exc:
                log.warning("drift of %s@%s not scored: %s", model, version, exc)
                continue
            reports: list[tuple[str, DriftReport]] = []
            try:
                reference = self.reference(model, version)
                if reference is not None:
                    label_names = sorted({k for c in counts for k in c.labels})
                    for by in [None, "profile", *(f"label:{k}" for k in label_names)]:
                        reports += [(by or FLEET, r) for r in fleet_drift(model, version, reference, counts, by=by)]
            except EdgefleetError as exc:  # fitted counts do fit: kept so one surprise loses one version only
                log.warning("drift of %s@%s not scored: %s", model, version, exc)
                reports = []
            out.append(VersionFigures(model, version, totals, tuple(reports)))
        if problems.counts:
            log.debug("alert inputs skipped data of %d device(s): %s", len(problems.counts), problems.to_list()[:3])
        return out

    def observations(self, *, now: float | None = None) -> list[Observation]:
        """Every value the alert rules watch, as of ``now``."""
        rows = self._rows(self._since(now, None), self._until(now))
        devices = self._devices()
        out: list[Observation] = []
        for figures in self._figures(rows, devices):
            out += model_observations(figures.model, figures.version, figures.totals)
            out += drift_observations(r for _, r in figures.reports)
        out += self._offline(devices.values())
        out += self._rollouts()
        return out

    def version_states(self) -> dict[tuple[str, str, str], int]:
        """Enrolled devices per (model, version they report, state): ``online``, ``updating``
        (online with an update in flight) or ``offline``. Revoked devices are not counted."""
        out: dict[tuple[str, str, str], int] = defaultdict(int)
        for d in self._devices().values():
            if d.status != "enrolled":
                continue
            state = "offline"
            if d.online:
                phase = _state(d).partition("/")[2]
                state = "updating" if phase and phase not in SETTLED_PHASES else "online"
            for model, version in self._versions(d).items():
                out[(model, version, state)] += 1
        return dict(sorted(out.items()))

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

    def rollout_progress(self, *, keep_finished: int = KEEP_FINISHED_ROLLOUTS) -> list[dict[str, Any]]:
        """Per rollout: model, version, state, device counts by status and its waves' shadow/canary
        stages as stored (``fleet_server.rollouts.machine.StageState.to_dict``) (for /metrics). Every
        rollout not finished, and the last ``keep_finished`` finished ones: a fleet that rolls out
        every day must not keep a series per rollout forever."""
        with self.db.session() as session:
            listed = session.execute(text("SELECT id, state, updated_at FROM rollouts")).all()
            finished = sorted((r for r in listed if r[1] in FINISHED_ROLLOUT_STATES),
                              key=lambda r: (str(r[2]), r[0]), reverse=True)[:keep_finished]
            ids = [r[0] for r in listed if r[1] not in FINISHED_ROLLOUT_STATES] + [r[0] for r in finished]
            rows = session.execute(text("SELECT id, model, version, state, header FROM rollouts "
                                        "WHERE id IN :ids").bindparams(bindparam("ids", expanding=True)),
                                   {"ids": ids}).all() if ids else []
            # Counted by the database from the per-device rows (issue 13): no record is read here.
            counted = session.execute(text("SELECT rollout_id, status, COUNT(*) FROM rollout_devices "
                                           "WHERE rollout_id IN :ids GROUP BY rollout_id, status")
                                      .bindparams(bindparam("ids", expanding=True)), {"ids": ids}).all() if ids else []
        statuses: dict[str, dict[str, int]] = defaultdict(dict)
        for rid, status, count in counted:
            statuses[rid][str(status)] = int(count)
        out = []
        for rid, model, version, state, header in sorted(rows):
            if isinstance(header, str):  # SQLite hands raw JSON text to a text() query
                header = json.loads(header)
            doc = header if isinstance(header, Mapping) else {}
            out.append({"id": rid, "model": model, "version": version, "state": state,
                        "devices": dict(sorted(statuses[rid].items())),
                        "stages": [st for st in doc.get("stages", []) or [] if isinstance(st, Mapping)]})
        return out
