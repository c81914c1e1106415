"""Fleet drift: devices' reference-bin counts added up and compared with the bundle's reference.

Devices send counts, not scores (``edgefleet.telemetry``), so the server can score any group
of devices over any time window: add the counts of the batches in the window
(``DeviceCounts.from_records``), group the devices by a label or by profile and add again
(``merge_by``), then score each feature of each group against the reference
(``drift_report``) with three measures:

* PSI (``edgefleet.telemetry.psi``, the same function and bands the agent uses): unbounded,
  sensitive to bins the reference barely used; <0.1 stable, 0.1-0.25 moderate, >0.25 drift.
* Jensen-Shannon divergence, base 2: bounded in [0, 1], symmetric, finite with empty bins;
  reads better than PSI when a bin is empty on one side.
* Hellinger distance: bounded in [0, 1], a true metric; reads well across features.

``Totals`` adds up the other per-version counters (requests, errors, feedback) for the fleet
views and the alert rules: error rate and accuracy by version.

Pure: counts in, numbers out; no database, no clock. It does not store batches (ingest does)
or decide alerts (``fleet_server.telemetry.alerts`` does).

    ServerError (fleet_server.errors)
    └── InvalidInputError
        └── DriftInputError     counts do not fit the reference (feature or bin count differs)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefleet.telemetry import PSI_EPSILON, ModelRecord, ReferenceProfile, band, proportions, psi
from fleet_server.errors import InvalidInputError

FLEET = "fleet"
"""The group name when devices are not grouped."""


class DriftInputError(InvalidInputError):
    """Device counts do not fit the reference they are compared with."""


# ---- divergences -------------------------------------------------------------------------

def _shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [c / total for c in counts] if total > 0 else [0.0] * len(counts)


def js_divergence(actual: Sequence[float], expected: Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two count vectors over the same bins."""
    _same_bins(actual, expected)
    p, q = _shares(actual), _shares(expected)
    if not any(p) or not any(q):
        return 0.0
    total = 0.0
    for a, b in zip(p, q, strict=True):
        m = (a + b) / 2
        if a > 0:
            total += 0.5 * a * math.log2(a / m)
        if b > 0:
            total += 0.5 * b * math.log2(b / m)
    return min(1.0, max(0.0, total))


def hellinger(actual: Sequence[float], expected: Sequence[float]) -> float:
    """Hellinger distance (in [0, 1]) between two count vectors over the same bins."""
    _same_bins(actual, expected)
    p, q = _shares(actual), _shares(expected)
    if not any(p) or not any(q):
        return 0.0
    overlap = sum(math.sqrt(a * b) for a, b in zip(p, q, strict=True))
    return math.sqrt(max(0.0, 1.0 - overlap))


def _same_bins(actual: Sequence[float], expected: Sequence[float]) -> None:
    if len(actual) != len(expected):
        raise DriftInputError(f"counts over {len(actual)} bins cannot be compared with {len(expected)} reference bins",
                              fix="compare counts taken over the same bundle's reference edges")


# ---- per-device counts and merging ----------------------------------------------------------

class _Sum:
    """Adds count vectors of one ragged shape (features x their bins), flat in numpy.

    Every added vector must have the shape of the first: counts over other edges belong to
    another bundle and adding them would be meaningless.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.shape: tuple[int, ...] | None = None
        self.flat: np.ndarray = np.zeros(0, dtype=np.int64)

    def add(self, counts: Sequence[Sequence[int]], who: str) -> None:
        if not counts:
            return
        shape = tuple(len(c) for c in counts)
        if self.shape is None:
            self.shape = shape
            self.flat = np.zeros(sum(shape), dtype=np.int64)
        elif shape != self.shape:
            raise DriftInputError(f"{who} sent {self.what} over {len(shape)} x {list(shape)[:4]}... bins where "
                                  f"{len(self.shape)} x {list(self.shape)[:4]}... were expected",
                                  fix="only add counts of the same model version (the same reference edges)")
        self.flat += np.fromiter(itertools.chain.from_iterable(counts), dtype=np.int64, count=len(self.flat))

    def result(self) -> tuple[tuple[int, ...], ...]:
        if self.shape is None:
            return ()
        values = self.flat.tolist()
        out, start = [], 0
        for width in self.shape:
            out.append(tuple(values[start:start + width]))
            start += width
        return tuple(out)


@dataclass(frozen=True)
class Totals:
    """Requests, errors and feedback of one model version, summed over batches and devices."""

    count: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    labels: int = 0
    correct: int = 0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float | None:
        return self.error_count / self.count if self.count else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labels if self.labels else None

    def __add__(self, other: Totals) -> Totals:
        errors = dict(self.errors)
        for kind, n in other.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        return Totals(self.count + other.count, errors, self.labels + other.labels, self.correct + other.correct)

    @classmethod
    def of(cls, record: ModelRecord) -> Totals:
        return cls(record.count, dict(record.errors), record.feedback.labels, record.feedback.correct)


@dataclass(frozen=True)
class DeviceCounts:
    """One device's counts for one model version over a time window."""

    device_id: str
    profile: str
    labels: Mapping[str, str]
    features: tuple[tuple[int, ...], ...]
    outputs: tuple[int, ...]
    totals: Totals = field(default_factory=Totals)

    @classmethod
    def from_records(cls, device_id: str, profile: str, labels: Mapping[str, str],
                     records: Iterable[ModelRecord]) -> DeviceCounts:
        """Add up a device's records of ONE model version (the batches of a time window).

        Records without drift counts (most batches: features ride on every Nth) add nothing
        to the features but still add outputs and totals.
        """
        features, outputs = _Sum("features"), _Sum("outputs")
        totals = Totals()
        seen: set[tuple[str, str]] = set()
        for record in records:
            seen.add((record.model, record.version))
            if len(seen) > 1:
                raise DriftInputError(f"device {device_id} records mix model versions {sorted(seen)}",
                                      fix="add up the records of one model version at a time")
            features.add(record.drift, f"device {device_id}")
            outputs.add([record.outputs] if record.outputs else [], f"device {device_id}")
            totals = totals + Totals.of(record)
        return cls(device_id, profile, dict(labels), features.result(), (outputs.result() or ((),))[0], totals)


def misfit(record: ModelRecord, reference: ReferenceProfile | None) -> str | None:
    """Why ``record``'s drift or output counts cannot be added to ``reference``'s (None: they fit).

    The fleet views ask before adding a device's counts, so that one device sending counts over
    other bins loses its own counts, not the whole fleet's report (``_Sum`` would refuse the
    merge). Without a reference nothing can be scored, so no counts fit.
    """
    if reference is None:
        return "the model version has no reference profile" if record.drift or record.outputs else None
    if record.drift:
        if len(record.drift) != len(reference.features):
            return f"drift counts over {len(record.drift)} features where the reference has {len(reference.features)}"
        for ref, counts in zip(reference.features, record.drift, strict=True):
            if len(counts) != ref.bins:
                return f"feature {ref.name!r}: drift counts over {len(counts)} bins where the reference has {ref.bins}"
    # Output counts against a reference without outputs are not scored at all: nothing to misfit.
    if record.outputs and reference.output_counts and len(record.outputs) != len(reference.output_counts):
        return (f"output counts over {len(record.outputs)} classes or bins where the reference has "
                f"{len(reference.output_counts)}")
    return None


def group_of(device: DeviceCounts, by: str | None) -> str:
    """The group a device falls in: ``None`` -> the whole fleet, ``"profile"`` -> its profile,
    ``"label:NAME"`` or a bare label name -> that label's value (``-`` when unset)."""
    if by is None or by == FLEET:
        return FLEET
    if by == "profile":
        return device.profile
    name = by.removeprefix("label:")
    return f"{name}={device.labels.get(name, '-')}"


@dataclass(frozen=True)
class MergedCounts:
    """Counts of a group of devices for one model version."""

    group: str
    devices: int
    features: tuple[tuple[int, ...], ...]
    outputs: tuple[int, ...]
    totals: Totals


def merge(group: str, devices: Sequence[DeviceCounts]) -> MergedCounts:
    features, outputs = _Sum("features"), _Sum("outputs")
    totals = Totals()
    for device in devices:
        features.add(device.features, f"device {device.device_id}")
        outputs.add([device.outputs] if device.outputs else [], f"device {device.device_id}")
        totals = totals + device.totals
    return MergedCounts(group, len(devices), features.result(), (outputs.result() or ((),))[0], totals)


def merge_by(devices: Iterable[DeviceCounts], by: str | None = None) -> dict[str, MergedCounts]:
    """Merge devices into groups (see ``group_of``), sorted by group name."""
    groups: dict[str, list[DeviceCounts]] = {}
    for device in devices:
        groups.setdefault(group_of(device, by), []).append(device)
    return {name: merge(name, members) for name, members in sorted(groups.items())}


# ---- scoring -----------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    rows: int
    psi: float
    js: float
    hellinger: float
    band: str

    @classmethod
    def score(cls, name: str, counts: Sequence[int], reference: Sequence[int]) -> FeatureDrift:
        value = psi(counts, reference)
        return cls(name, int(sum(counts)), value, js_divergence(counts, reference), hellinger(counts, reference),
                   band(value) if sum(counts) else "no data")

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "rows": self.rows, "psi": round(self.psi, 6), "js": round(self.js, 6),
                "hellinger": round(self.hellinger, 6), "band": self.band}


@dataclass(frozen=True)
class DriftReport:
    """Drift of one group of devices on one model version."""

    model: str
    version: str
    group: str
    devices: int
    features: tuple[FeatureDrift, ...]
    output: FeatureDrift | None
    totals: Totals

    @property
    def max_psi(self) -> float:
        return max((f.psi for f in self.features), default=0.0)

    @property
    def rows(self) -> int:
        """Input rows merged into the report: every row lands in one bin of each feature, so the
        features agree; the largest is taken in case a device skipped a feature's value."""
        return max((f.rows for f in self.features), default=0)

    @property
    def band(self) -> str:
        """The worst band of any feature (``no data`` when no feature has counts)."""
        scored = [f.band for f in self.features if f.band != "no data"]
        if not scored:
            return "no data"
        return max(scored, key=("stable", "moderate", "drift").index)

    def drifting(self) -> list[FeatureDrift]:
        return sorted((f for f in self.features if f.band == "drift"), key=lambda f: -f.psi)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "group": self.group, "devices": self.devices,
            "band": self.band, "max_psi": round(self.max_psi, 6), "rows": self.rows,
            "features": [f.to_dict() for f in self.features],
            "output": self.output.to_dict() if self.output else None,
            "requests": self.totals.count, "error_rate": self.totals.error_rate, "accuracy": self.totals.accuracy,
            "labels": self.totals.labels,
        }


def drift_report(model: str, version: str, reference: ReferenceProfile, merged: MergedCounts) -> DriftReport:
    """Score each feature (and the outputs) of a merged group against the bundle's reference."""
    if merged.features and len(merged.features) != len(reference.features):
        raise DriftInputError(f"{model}@{version}: devices sent {len(merged.features)} features but the "
                              f"reference has {len(reference.features)}",
                              fix="check that the devices run the bundle this reference came from")
    features = []
    for i, ref in enumerate(reference.features):
        counts = merged.features[i] if merged.features else (0,) * ref.bins
        if len(counts) != ref.bins:
            raise DriftInputError(f"{model}@{version} feature {ref.name!r}: {len(counts)} bins sent, "
                                  f"{ref.bins} in the reference",
                                  fix="check that the devices run the bundle this reference came from")
        features.append(FeatureDrift.score(ref.name, counts, ref.counts))
    output = None
    if reference.output_counts:
        outputs = merged.outputs or (0,) * len(reference.output_counts)
        _same_bins(outputs, reference.output_counts)
        output = FeatureDrift.score("output", outputs, reference.output_counts)
    return DriftReport(model, version, merged.group, merged.devices, tuple(features), output, merged.totals)


class BandScorer:
    """The band ``drift_report(...).band`` gives, for many devices' counts against one reference,
    in numpy: PSI per feature only, all features at once (the device list needs each device's
    band, not its JS or Hellinger figures; scoring those in Python cost ~4 ms a device).

    The same formula as ``edgefleet.telemetry.psi`` (shares floored at ``PSI_EPSILON``, a
    feature without counts is "no data"); numpy adds in another order, so a PSI may differ in
    its last bits from the report's: a band can differ only for a figure within ~1e-15 of an edge.
    """

    def __init__(self, reference: ReferenceProfile) -> None:
        self.widths = [f.bins for f in reference.features]
        self.starts = np.cumsum([0, *self.widths[:-1]]) if self.widths else np.zeros(0, dtype=np.int64)
        expected = []
        for f in reference.features:
            expected += proportions([float(c) for c in f.counts], PSI_EPSILON)
        self.expected = np.asarray(expected, dtype=np.float64)

    def band(self, features: Sequence[Sequence[int]]) -> str:
        if not features or not self.widths:
            return "no data"
        if [len(f) for f in features] != self.widths:
            raise DriftInputError(f"counts over {len(features)} features of {[len(f) for f in features][:4]}... bins "
                                  f"cannot be scored against a reference of {len(self.widths)} features",
                                  fix="check that the devices run the bundle this reference came from")
        flat = np.fromiter(itertools.chain.from_iterable(features), dtype=np.float64, count=int(sum(self.widths)))
        totals = np.add.reduceat(flat, self.starts)
        scored = totals > 0
        if not scored.any():
            return "no data"
        shares = np.maximum(flat / np.repeat(np.where(scored, totals, 1.0), self.widths), PSI_EPSILON)
        values = np.add.reduceat((shares - self.expected) * np.log(shares / self.expected), self.starts)
        return band(float(values[scored].max()))


def fleet_drift(model: str, version: str, reference: ReferenceProfile, devices: Iterable[DeviceCounts],
                by: str | None = None) -> list[DriftReport]:
    """One report per group (the whole fleet when ``by`` is None), sorted by group name."""
    return [drift_report(model, version, reference, merged) for merged in merge_by(devices, by).values()]
